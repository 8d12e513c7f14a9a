"""Cancellation (queued/running x thread/process), timeouts and worker crashes.

One module server with a single process worker and a single thread slot, so "queued" is easy to
arrange. Every test starts from an idle server with a full pool.
"""

import time

import pytest

import sy_helpers as sy


@pytest.fixture(scope="module")
def cs(module_server_factory):
    return module_server_factory("--process-workers", "1", "--thread-concurrency", "1")


@pytest.fixture(autouse=True)
def _idle(cs):
    cs.wait_idle()
    cs.wait_pool(1)
    yield


def _restarts(server, reason):
    samples, _ = server.metrics()
    return sy.metric_sum(samples, "switchyard_worker_restarts_total", reason=reason) or 0


def _assert_gone(ident, timeout=5.0):
    sy.wait_until(lambda: sy.identity_state(ident) == "gone", timeout, interval=0.05,
                  message=f"worker {ident[0]} to be gone (no process, no zombie)")


def _next_cpu_job_pid(server):
    final = server.wait_job(server.submit_ok("primes", {"n": 1000})["id"])
    assert final["status"] == "succeeded", final
    return final["worker_pid"]


def _cancel(server, job_id):
    r = server.request("DELETE", f"/v1/jobs/{job_id}")
    assert r.status == 200, (r.status, r.body)
    assert r.headers.get_content_type() == "application/json"
    sy.assert_job_resource(r.body)
    assert r.body["id"] == job_id
    return r.headers.get("Switchyard-Cancellation"), r.body


def test_cancel_queued_and_running_process_jobs(cs):
    cancels_before = _restarts(cs, "cancel")
    running = cs.submit_ok("burn", {"ms": 20000})
    running = cs.wait_status(running["id"], "running")
    pid = running["worker_pid"]
    assert isinstance(pid, int) and pid in cs.worker_pids(), running
    ident = sy.proc_identity(pid)

    queued = cs.submit_ok("burn", {"ms": 100})
    assert cs.job(queued["id"])["status"] == "queued"

    how, body = _cancel(cs, queued["id"])
    assert how == "dequeued"
    assert body["status"] == "cancelled" and body["error"]["code"] == "cancelled", body
    after = cs.job(queued["id"])
    assert after["status"] == "cancelled" and after["started_at"] is None, after
    assert after["worker_pid"] is None
    assert cs.job(running["id"])["status"] == "running", "cancelling a queued job hit the other"

    t0 = time.monotonic()
    how, body = _cancel(cs, running["id"])
    assert how == "killed"
    assert body["status"] == "cancelled" and body["error"]["code"] == "cancelled", body
    assert time.monotonic() - t0 < 2.0
    final = cs.wait_job(running["id"])
    assert final["status"] == "cancelled" and final["error"]["code"] == "cancelled"
    assert final["worker_pid"] == pid
    _assert_gone(ident)
    cs.wait_pool(1)
    new_pid = _next_cpu_job_pid(cs)
    assert new_pid != pid
    assert _restarts(cs, "cancel") == cancels_before + 1

    # terminal now: a second cancel is a conflict and changes nothing
    sy.assert_problem(cs.request("DELETE", f"/v1/jobs/{running['id']}"), 409, "conflict")
    sy.assert_problem(cs.request("DELETE", f"/v1/jobs/{queued['id']}"), 409, "conflict")
    assert cs.job(running["id"])["finished_at"] == final["finished_at"]


def test_cancel_queued_and_running_thread_jobs(cs):
    running = cs.submit_ok("sleep", {"ms": 20000})
    cs.wait_status(running["id"], "running")
    queued = cs.submit_ok("sleep", {"ms": 100})
    assert cs.job(queued["id"])["status"] == "queued"

    how, body = _cancel(cs, queued["id"])
    assert how == "dequeued"
    assert body["status"] == "cancelled" and body["error"]["code"] == "cancelled", body
    assert cs.job(queued["id"])["started_at"] is None

    t0 = time.monotonic()
    how, body = _cancel(cs, running["id"])
    assert how == "requested"
    assert body["status"] in ("running", "cancelled"), body
    final = cs.wait_job(running["id"], timeout=5)
    assert final["status"] == "cancelled" and final["error"]["code"] == "cancelled", final
    assert time.monotonic() - t0 < 2.0, "a sleeping job did not honour its cancellation slot"
    assert final["worker_pid"] is None
    # the slot is free again: the next io job runs
    nxt = cs.wait_job(cs.submit_ok("sleep", {"ms": 10})["id"], timeout=5)
    assert nxt["status"] == "succeeded", nxt


def test_timeout_kills_process_job(cs):
    timeouts_before = _restarts(cs, "timeout")
    (pid,) = cs.live_worker_pids()
    ident = sy.proc_identity(pid)
    t0 = time.monotonic()
    job = cs.submit_ok("burn", {"ms": 5000}, timeout_ms=300)
    assert job["timeout_ms"] == 300
    final = cs.wait_job(job["id"], timeout=10)
    elapsed = time.monotonic() - t0
    assert final["status"] == "timed_out", final
    assert final["error"]["code"] == "timeout", final
    assert elapsed < 2.0, f"a 300 ms timeout took {elapsed:.2f}s to be reported"
    assert final["worker_pid"] == pid, final
    _assert_gone(ident)
    cs.wait_pool(1)
    assert _next_cpu_job_pid(cs) != pid
    assert _restarts(cs, "timeout") == timeouts_before + 1


def test_timeout_thread_job(cs):
    t0 = time.monotonic()
    job = cs.submit_ok("sleep", {"ms": 5000}, timeout_ms=200)
    final = cs.wait_job(job["id"], timeout=10)
    assert final["status"] == "timed_out" and final["error"]["code"] == "timeout", final
    assert time.monotonic() - t0 < 2.0


@pytest.mark.parametrize("sig", ["SEGV", "ABRT", "KILL"])
def test_crash_is_isolated_and_reported(cs, sig):
    crashes_before = _restarts(cs, "crash")
    old = cs.live_worker_pids()
    idents = [sy.proc_identity(p) for p in old]
    job = cs.submit_ok("crash", {"signal": sig})
    assert job["model"] == "process"
    final = cs.wait_job(job["id"], timeout=10)
    assert final["status"] == "failed", final
    assert final["error"]["code"] == "worker_crashed", final
    assert f"SIG{sig}" in final["error"]["message"], final
    assert final["worker_pid"] in old
    assert cs.alive() and cs.get("/healthz").status == 200
    for ident in idents:
        _assert_gone(ident)
    cs.wait_pool(1)
    assert cs.live_worker_pids().isdisjoint(old)
    assert _next_cpu_job_pid(cs) not in old
    assert _restarts(cs, "crash") == crashes_before + 1
    assert cs.get("/readyz").status == 200


def test_crash_on_thread_model_is_refused(cs):
    sy.assert_validation(cs.submit("crash", {"signal": "SEGV"}, model="thread"), "/model")


def test_stats_count_outcomes(cs):
    before = cs.stats()["models"]
    a = cs.submit_ok("sleep", {"ms": 5000}, timeout_ms=100)
    b = cs.submit_ok("crash", {"signal": "ABRT"})
    c = cs.submit_ok("burn", {"ms": 10})
    for j in (a, b, c):
        cs.wait_job(j["id"])
    cs.wait_pool(1)
    after = cs.stats()["models"]
    assert after["thread"]["timed_out"] == before["thread"]["timed_out"] + 1
    assert after["process"]["failed"] == before["process"]["failed"] + 1
    assert after["process"]["succeeded"] == before["process"]["succeeded"] + 1
    assert after["process"]["submitted"] == before["process"]["submitted"] + 2
    assert after["thread"]["submitted"] == before["thread"]["submitted"] + 1
