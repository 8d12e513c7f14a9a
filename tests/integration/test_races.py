"""Races between a job's end and its stop, and faults between jobs: found in review, kept fixed."""

import os
import signal
import time

import pytest

import sy_helpers as sy


def test_timeouts_racing_completion_do_not_crash_the_server(server_factory):
    # Sleeps whose timeout equals their length: the deadline and the end arrive together, so a
    # stop may reach a coroutine that has just finished.
    s = server_factory("--process-workers", "1")
    ids = []
    for round_ in range(3):
        jobs = [{"type": "sleep", "input": {"ms": 100}, "timeout_ms": 100 + (i % 4)} for i in range(500)]
        r = s.request("POST", "/v1/jobs:batch", {"jobs": jobs}, timeout=30)
        assert r.status == 202, (round_, r.status, str(r.body)[:200])
        ids += [j["id"] for j in r.body["jobs"]]
        time.sleep(0.3)
    assert s.proc.poll() is None, "server died"
    for job_id in ids[-20:]:
        assert s.wait_job(job_id)["status"] in ("succeeded", "timed_out")
    stats = s.stats()["models"]["thread"]
    assert stats["succeeded"] + stats["timed_out"] == len(ids), stats
    assert s.get("/healthz").status == 200


def test_cancel_after_the_answer_never_reuses_a_signalled_worker(server_factory):
    s = server_factory("--process-workers", "1")
    crashed = []
    for _ in range(60):
        first = s.submit_ok("noop", {})
        s.request("DELETE", f"/v1/jobs/{first['id']}")
        second = s.submit("noop", {}, headers={"Prefer": "wait=10"})
        assert second.status == 200, second.body
        if second.body["status"] != "succeeded":
            crashed.append(second.body)
    assert not crashed, crashed[:2]


def test_worker_killed_while_idle_does_not_fail_the_next_job(server_factory):
    s = server_factory("--process-workers", "1")
    s.wait_pool(1)
    (pid,) = s.live_worker_pids()
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    r = s.submit("primes", {"n": 1000}, headers={"Prefer": "wait=10"})
    assert r.status == 200 and r.body["status"] == "succeeded", r.body
    assert r.body["worker_pid"] != pid
    s.wait_pool(1)


def test_blocking_jobs_on_threads_do_not_hold_up_io_jobs(server_factory):
    s = server_factory("--io-threads", "2", "--process-workers", "1")
    for _ in range(2):  # one blocking slot with 2 io threads: the second waits in the queue
        s.submit_ok("burn", {"ms": 1500}, model="thread")
    t0 = time.monotonic()
    r = s.submit("sleep", {"ms": 10}, headers={"Prefer": "wait=5"})
    assert r.status == 200 and r.body["status"] == "succeeded", r.body
    assert time.monotonic() - t0 < 1.0


def test_one_io_thread_runs_blocking_jobs_on_the_thread_model_beside_it(server_factory):
    # A cpu type sent to the thread model runs on the executor's blocking thread, so the one io
    # thread goes on serving requests and running io jobs meanwhile.
    s = server_factory("--io-threads", "1", "--process-workers", "1")
    job = s.submit_ok("burn", {"ms": 1500}, model="thread")
    sy.wait_until(lambda: s.job(job["id"])["status"] == "running", 5, message="burn running")
    t0 = time.monotonic()
    r = s.submit("sleep", {"ms": 10}, model="thread", headers={"Prefer": "wait=5"})
    assert r.status == 200 and r.body["status"] == "succeeded", r.body
    assert s.get("/healthz").status == 200
    assert time.monotonic() - t0 < 0.5
    done = s.wait_job(job["id"])
    assert done["status"] == "succeeded" and done["model"] == "thread", done


def test_v1_needs_a_token_before_anything_else(server_factory, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# comment\nsecret-one\n")
    s = server_factory("--tokens-file", str(tokens))
    for method, path in (("GET", "/v1/nope"), ("PUT", "/v1/jobs"), ("GET", "/v1/jobs")):
        r = s.request(method, path)
        sy.assert_problem(r, 401, "unauthorized")
        assert r.headers.get("WWW-Authenticate", "").startswith("Bearer")
    ok = s.request("GET", "/v1/jobs", headers={"Authorization": "Bearer secret-one"})
    assert ok.status == 200
    assert s.request("GET", "/v1/jobs", headers={"Authorization": "Bearer secret-two"}).status == 401
    assert s.get("/healthz").status == 200 and s.get("/metrics").status == 200


def test_cursor_must_be_canonical(server):
    server.submit_ok("sleep", {"ms": 1})
    server.submit_ok("sleep", {"ms": 1})
    page = server.get("/v1/jobs?limit=1").body
    assert page["next_cursor"]
    sy.assert_problem(server.get("/v1/jobs?cursor=" + page["next_cursor"].upper()), 400, "invalid_query")


def test_batch_larger_than_the_queue_is_422_not_429(server_factory):
    s = server_factory("--queue-limit", "5")
    r = s.request("POST", "/v1/jobs:batch", {"jobs": [{"type": "sleep", "input": {"ms": 1}}] * 6})
    sy.assert_validation(r, "/jobs", "validation_failed")


def test_cancelling_a_finished_job_names_its_status(server):
    job = server.submit("sleep", {"ms": 1}, headers={"Prefer": "wait=5"}).body
    assert job["status"] == "succeeded"
    body = sy.assert_problem(server.request("DELETE", f"/v1/jobs/{job['id']}"), 409, "conflict")
    assert body["job_status"] == "succeeded"
    assert "succeeded" in body["detail"]
