"""The durable job store (SQLite, the default): a 202 survives kill -9, the attempt rule, the
result TTL, and shutdown that leaves queued jobs for the next start.

Every server here gets an explicit ``--data-dir`` so that a restart (a new server process) finds
the same files. Traffic goes to 127.0.0.1 only; every loop is bounded.
"""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

import sy_helpers as sy


@pytest.fixture
def data_dir():
    path = tempfile.mkdtemp(prefix="switchyard-data-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _events(server, msg):
    out = []
    for line in server.stderr_lines:
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if obj.get("msg") == msg:
                out.append(obj)
    return out


def _wait_all_terminal(server, ids, timeout):
    holder = {}

    def done():
        holder["jobs"] = sy.list_all(server)
        return all(holder["jobs"].get(i, {}).get("status") in sy.TERMINAL for i in ids)

    sy.wait_until(done, timeout, interval=0.5, message=f"{len(ids)} jobs terminal")
    return holder["jobs"]


def _submit_batch(server, jobs):
    r = server.request("POST", "/v1/jobs:batch", {"jobs": jobs}, timeout=60)
    assert r.status == 202, (r.status, r.body)
    return [j["id"] for j in r.body["jobs"]]


def test_kill9_mid_run_loses_no_accepted_job(server_factory, data_dir):
    """5,000 mixed jobs on both models, kill -9 of the server while they run, a restart on the same
    data directory: every job that got a 202 is there, reaches exactly one terminal state, and the
    counts add up. Jobs cut short follow the attempt rule."""
    flags = ("--data-dir", data_dir, "--process-workers", "2", "--queue-limit", "10000")
    s = server_factory(*flags)
    shapes = [
        {"type": "sleep", "input": {"ms": 300}},                        # thread, waits
        {"type": "noop", "model": "process"},                           # process, instant
        {"type": "burn", "input": {"ms": 3}, "max_attempts": 2},       # process, retried once
        {"type": "hash", "input": {"data": "abc", "iterations": 50}},   # process
        {"type": "sleep", "input": {"ms": 50}, "max_attempts": 3},      # thread, retried
    ]
    accepted = []
    for b in range(20):
        accepted += _submit_batch(s, [shapes[(b * 250 + i) % len(shapes)] for i in range(250)])
    assert len(accepted) == 5000 and len(set(accepted)) == 5000

    # Kill it while work remains: some jobs done, some running, the rest queued.
    def some_done():
        m = s.stats()["models"]
        return m["process"]["succeeded"] + m["thread"]["succeeded"] >= 500
    sy.wait_until(some_done, 60, interval=0.05, message="500 jobs done before the kill")
    before = s.stats()["models"]
    os.kill(s.pid, signal.SIGKILL)
    s.wait_exit(10)
    done_before = before["process"]["succeeded"] + before["thread"]["succeeded"]
    assert done_before < 5000, "everything finished before the kill; the test proves nothing"

    t0 = time.monotonic()
    s2 = server_factory(*flags)
    opened = _events(s2, "store opened")
    assert opened and opened[0]["jobs"] == 5000, opened
    recovered = _events(s2, "jobs recovered from the store")
    assert recovered, s2.log_tail()
    jobs = _wait_all_terminal(s2, accepted, 120)
    elapsed = time.monotonic() - t0
    missing = [i for i in accepted if i not in jobs]
    assert not missing, f"{len(missing)} accepted jobs lost, e.g. {missing[:3]}"
    assert len(jobs) == 5000, f"{len(jobs) - 5000} jobs appeared from nowhere"
    by_status = {}
    for job in jobs.values():
        by_status[job["status"]] = by_status.get(job["status"], 0) + 1
        assert job["attempts"] <= job["max_attempts"], job
        if job["status"] == "failed":
            assert job["error"]["code"] == "interrupted", job
            assert job["attempts"] == job["max_attempts"], job
        else:
            assert job["status"] == "succeeded", job
    interrupted = recovered[0]["failed_interrupted"]
    assert by_status.get("failed", 0) == interrupted
    assert by_status["succeeded"] + by_status.get("failed", 0) == 5000
    print(f"kill -9 after {done_before} done; restart finished the rest in {elapsed:.1f}s: "
          f"{by_status}, requeued {recovered[0]['requeued']}")


def test_results_and_idempotency_survive_a_restart(server_factory, data_dir):
    flags = ("--data-dir", data_dir, "--process-workers", "1")
    s = server_factory(*flags)
    key = {"Idempotency-Key": "restart-1"}
    r = s.submit("primes", {"n": 1000}, headers=key)
    assert r.status == 202
    first = s.wait_job(r.body["id"])
    assert first["status"] == "succeeded" and first["result"] == {"count": 168}
    assert s.stop() == 0

    s2 = server_factory(*flags)
    again = s2.job(first["id"])
    for field in ("status", "result", "created_at", "started_at", "finished_at", "attempts", "worker_pid",
                  "input", "type", "model", "priority", "timeout_ms", "max_attempts"):
        assert again[field] == first[field], field
    r = s2.submit("primes", {"n": 1000}, headers=key)
    assert r.status == 200 and r.body["id"] == first["id"], (r.status, r.body)
    r = s2.submit("primes", {"n": 999}, headers=key)
    sy.assert_problem(r, 409, "conflict")
    # New ids stay time-ordered after the ones from the last run.
    newer = s2.submit_ok("noop")
    assert newer["id"] > first["id"]


def test_sigterm_leaves_unfinished_jobs_for_the_next_start(server_factory, data_dir):
    """With a durable store, shutdown does not cancel queued jobs: they stay queued on disk and run
    at the next start. Jobs stopped at the end of the grace follow the attempt rule there."""
    flags = ("--data-dir", data_dir, "--process-workers", "1", "--drain-grace-ms", "300")
    s = server_factory(*flags)
    s.wait_pool(1)
    once = s.submit_ok("burn", {"ms": 20000})                     # running, no attempt left
    s.wait_status(once["id"], "running")
    retried = s.submit_ok("sleep", {"ms": 20000}, max_attempts=2)  # running on a thread
    s.wait_status(retried["id"], "running")
    queued = [s.submit_ok("burn", {"ms": 20}) for _ in range(5)]
    assert all(s.job(q["id"])["status"] == "queued" for q in queued)
    assert s.stop(timeout=15) == 0, s.log_tail()
    drained = _events(s, "drained")
    assert drained and drained[0]["jobs_left_for_restart"] == 7 and drained[0]["jobs_not_terminal"] == 0, drained

    s2 = server_factory(*flags)
    for q in queued:
        job = s2.wait_job(q["id"], timeout=20)
        assert job["status"] == "succeeded" and job["attempts"] == 1, job
    job = s2.job(once["id"])
    assert job["status"] == "failed" and job["error"]["code"] == "interrupted", job
    assert job["attempts"] == 1
    job = s2.wait_status(retried["id"], "running", timeout=10)
    assert job["attempts"] == 2, job
    r = s2.request("DELETE", f"/v1/jobs/{retried['id']}")
    assert r.status == 200


def test_worker_crash_is_retried_while_attempts_remain(server_factory, data_dir):
    s = server_factory("--data-dir", data_dir, "--process-workers", "1")
    job = s.submit_ok("crash", {"signal": "KILL"}, max_attempts=3)
    assert job["max_attempts"] == 3 and job["attempts"] == 0
    done = s.wait_job(job["id"], timeout=30)
    assert done["status"] == "failed" and done["error"]["code"] == "worker_crashed", done
    assert done["attempts"] == 3, done
    # The default is one attempt: no retry.
    once = s.wait_job(s.submit_ok("crash", {"signal": "SEGV"})["id"], timeout=30)
    assert once["attempts"] == 1 and once["max_attempts"] == 1, once
    # A job stopped for its own doing (here its timeout, which kills its worker) is not retried,
    # whatever max_attempts says.
    own = s.wait_job(s.submit_ok("burn", {"ms": 5000}, timeout_ms=200, max_attempts=5)["id"])
    assert own["status"] == "timed_out" and own["attempts"] == 1, own


@pytest.mark.parametrize("value", [0, 101, -1, "2", 1.5, None, True, 10**30])
def test_max_attempts_is_validated(server, value):
    r = server.request("POST", "/v1/jobs", {"type": "noop", "max_attempts": value})
    sy.assert_validation(r, "/max_attempts")


def test_result_ttl_deletes_finished_jobs(server_factory, data_dir):
    flags = ("--data-dir", data_dir, "--result-ttl-s", "1")
    s = server_factory(*flags)
    job = s.wait_job(s.submit_ok("noop")["id"])
    running = s.submit_ok("sleep", {"ms": 4000})
    sy.wait_until(lambda: s.get(f"/v1/jobs/{job['id']}").status == 404, 5, interval=0.1,
                  message="finished job deleted after its TTL")
    assert s.job(running["id"])["status"] in ("queued", "running")  # unfinished jobs never expire
    assert s.stop() == 0
    s2 = server_factory(*flags)
    sy.assert_problem(s2.get(f"/v1/jobs/{job['id']}"), 404, "not_found")


def test_a_data_directory_serves_one_server(server_factory, data_dir):
    s = server_factory("--data-dir", data_dir)
    with pytest.raises(RuntimeError) as refused:
        server_factory("--data-dir", data_dir)
    assert "in use by another Switchyard server (pid %d)" % s.pid in str(refused.value)
    assert s.get("/healthz").status == 200


def test_unusable_data_directory_is_a_clear_startup_error(server_factory, data_dir):
    path = os.path.join(data_dir, "file")
    with open(path, "w") as f:
        f.write("not a directory")
    with pytest.raises(RuntimeError) as refused:
        server_factory("--data-dir", path)
    assert "cannot create the data directory" in str(refused.value)
    foreign = os.path.join(data_dir, "foreign")
    os.mkdir(foreign)
    with open(os.path.join(foreign, "switchyard.db"), "wb") as f:
        f.write(b"this is not an SQLite file at all" * 100)
    with pytest.raises(RuntimeError) as refused:
        server_factory("--data-dir", foreign)
    assert "switchyard.db" in str(refused.value)


def test_memory_store_keeps_nothing_across_restarts(server_factory, data_dir):
    flags = ("--store", "memory", "--data-dir", data_dir)
    s = server_factory(*flags)
    job = s.wait_job(s.submit_ok("noop")["id"])
    assert s.stop() == 0
    assert not os.path.exists(os.path.join(data_dir, "switchyard.db"))
    s2 = server_factory(*flags)
    sy.assert_problem(s2.get(f"/v1/jobs/{job['id']}"), 404, "not_found")


def test_sqlite_sync_normal_survives_kill9(server_factory, data_dir):
    """--sqlite-sync normal skips the fsync per commit; WAL still survives the server's own crash."""
    flags = ("--data-dir", data_dir, "--sqlite-sync", "normal", "--process-workers", "1")
    s = server_factory(*flags)
    ids = _submit_batch(s, [{"type": "burn", "input": {"ms": 200}}] * 50)
    done = s.wait_job(s.submit_ok("noop", model="thread")["id"])
    os.kill(s.pid, signal.SIGKILL)
    s.wait_exit(10)
    s2 = server_factory(*flags)
    jobs = sy.list_all(s2)
    assert set(ids) | {done["id"]} == set(jobs), "jobs lost with --sqlite-sync normal"
    assert jobs[done["id"]]["status"] == "succeeded"
    s2.request("DELETE", f"/v1/jobs/{ids[-1]}")


def test_store_metrics(server_factory, data_dir):
    s = server_factory("--data-dir", data_dir)
    ids = _submit_batch(s, [{"type": "noop", "model": "thread"}] * 20)
    for i in ids:
        s.wait_job(i)
    samples, _ = s.metrics()
    commits = sy.metric_sum(samples, "switchyard_store_commits_total", result="ok")
    assert commits >= 1
    assert sy.metric_sum(samples, "switchyard_store_commits_total", result="error") == 0
    # A commit may land between the two samples of one scrape (the jobs' last states are
    # written after their waiters are woken).
    assert abs(sy.metric_sum(samples, "switchyard_store_commit_seconds_count") - commits) <= 1
    # 20 inserts, 20 starts, 20 ends at least, fewer when a batch carries several states of one job.
    assert sy.metric_sum(samples, "switchyard_store_changes_total") >= 20


def test_full_disk_refuses_with_503_and_recovers(switchyard_bin, data_dir):
    """A store that cannot write (here: the file-size limit, RLIMIT_FSIZE, as a full disk would)
    refuses submissions with 503 store_unavailable and Retry-After, keeps serving, and accepts
    again once it can write; nothing it refused runs, and what it refused is recorded."""
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("prlimit (util-linux) not found")
    s = sy.Server(switchyard_bin, ("--data-dir", data_dir, "--process-workers", "1"))
    s.args = [prlimit, "--fsize=400000:unlimited", "--"] + s.args  # soft limit 400 kB
    s.start()
    try:
        big = {"type": "hash", "input": {"data": "x" * 60000}}
        statuses = []
        for _ in range(20):
            r = s.request("POST", "/v1/jobs", big)
            statuses.append(r.status)
            if r.status != 202:
                sy.assert_problem(r, 503, "store_unavailable")
                assert (r.headers.get("Retry-After") or "").isdigit(), r.headers
        assert set(statuses) == {202, 503}, statuses
        assert s.get("/healthz").status == 200
        assert s.alive()
        assert _events(s, "store: commit failed, retrying"), s.log_tail()

        subprocess.run([prlimit, "--pid", str(s.pid), "--fsize=unlimited"], check=True, timeout=10)
        sy.wait_until(lambda: s.request("POST", "/v1/jobs", {"type": "noop", "model": "thread"}).status == 202,
                      10, interval=0.3, message="submissions accepted again")
        refused = sy.list_all(s)
        failed = [j for j in refused.values() if j["status"] == "failed"]
        assert len(failed) == statuses.count(503), (len(failed), statuses)
        assert all(j["error"]["code"] == "store_unavailable" and j["started_at"] is None for j in failed)
        assert s.stop() == 0
    finally:
        s.kill()
