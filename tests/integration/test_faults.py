"""Faults inside jobs, injected for real: a fork bomb, open-file exhaustion, a worker that stops
answering, a CPU hog over its CPU-time limit, a worker that grows past its RSS bound, and
workers that cannot boot. Each is contained with the right error code; the server and the other
jobs are unaffected."""

import json
import threading
import time

import sy_helpers as sy

WAIT = {"Prefer": "wait=20"}


def _restarts(server, reason):
    samples, _ = server.metrics()
    return sy.metric_sum(samples, "switchyard_worker_restarts_total", reason=reason) or 0


def _healthy_after(server, pids_before=None):
    """The server serves, a normal cpu job and io job succeed, the pool is back to full size."""
    assert server.get("/healthz").status == 200
    cpu = server.submit("hash", {"data": "still here"}, headers=WAIT).body
    assert cpu["status"] == "succeeded", cpu
    io = server.submit("sleep", {"ms": 5}, headers=WAIT).body
    assert io["status"] == "succeeded", io
    return cpu


def test_fork_bomb_is_refused_inside_a_worker(server_factory):
    s = server_factory("--process-workers", "2")
    r = s.submit("fork", {"processes": 10000}, headers=WAIT).body
    assert r["status"] == "failed", r
    assert r["error"]["code"] == "process_limit", r
    assert "Operation not permitted" in r["error"]["message"]
    # Nothing was created: the worker has no child, and it is still the same, healthy worker.
    assert not sy.children_of(r["worker_pid"])
    again = s.submit("fork", {"processes": 1}, headers=WAIT).body
    assert again["error"]["code"] == "process_limit"
    _healthy_after(s)
    assert s.stats()["models"]["process"]["workers"] == 2


def test_fork_is_allowed_when_the_sandbox_is_off(server_factory):
    # Shows that the refusal above comes from the sandbox, not from the test machine.
    s = server_factory("--process-workers", "1", "--no-worker-sandbox")
    r = s.submit("fork", {"processes": 3}, headers=WAIT).body
    assert r["status"] == "succeeded" and r["result"] == {"forked": 3}, r


def test_fork_type_is_refused_on_the_thread_model(server):
    r = server.request("POST", "/v1/jobs", {"type": "fork", "input": {"processes": 1}, "model": "thread"})
    sy.assert_problem(r, 422)


def test_open_file_exhaustion_fails_alone(server_factory):
    s = server_factory("--process-workers", "1", "--worker-max-files", "64")
    r = s.submit("open_files", {"count": 100000}, headers=WAIT).body
    assert r["status"] == "failed" and r["error"]["code"] == "file_limit", r
    assert "Too many open files" in r["error"]["message"]
    # The worker closed what it opened and goes on serving.
    ok = s.submit("open_files", {"count": 20}, headers=WAIT).body
    assert ok["status"] == "succeeded" and ok["worker_pid"] == r["worker_pid"], ok
    _healthy_after(s)


def test_a_worker_that_stops_answering_is_killed_at_the_deadline(server_factory):
    s = server_factory("--process-workers", "2")
    before = _restarts(s, "timeout")
    t0 = time.monotonic()
    r = s.submit("hang", {}, headers=WAIT, timeout_ms=800).body
    took = time.monotonic() - t0
    assert r["status"] == "timed_out" and r["error"]["code"] == "timeout", r
    assert 0.75 < took < 5, took
    sy.wait_until(lambda: sy.proc_stat(r["worker_pid"]) is None, 5, message="hung worker gone")
    assert _restarts(s, "timeout") == before + 1
    cpu = _healthy_after(s)
    assert cpu["worker_pid"] != r["worker_pid"]
    s.wait_pool(2)


def test_cpu_time_limit(server_factory):
    s = server_factory("--process-workers", "1", "--worker-cpu-seconds", "1")
    r = s.submit("burn", {"ms": 4000}, headers=WAIT, timeout_ms=20000).body
    assert r["status"] == "failed" and r["error"]["code"] == "cpu_limit", r
    # RLIMIT_CPU counts whole seconds: the job gets at least 1 s and less than 2 s more.
    assert 900 <= r["cpu_ms"] < 2600, r
    assert "SIGXCPU" in r["error"]["message"]
    # A job inside the limit on the replacement worker, and again on the same worker (the limit is
    # per job, not per worker life).
    a = s.submit("burn", {"ms": 600}, headers=WAIT).body
    b = s.submit("burn", {"ms": 600}, headers=WAIT).body
    assert a["status"] == b["status"] == "succeeded", (a, b)
    assert a["worker_pid"] == b["worker_pid"] != r["worker_pid"]


def test_worker_recycled_after_its_peak_rss_passes_the_bound(server_factory):
    s = server_factory("--process-workers", "1", "--worker-max-rss-mb", "200")
    small = s.submit("alloc", {"mb": 16}, headers=WAIT).body
    same = s.submit("noop", {}, headers=WAIT).body
    assert small["worker_pid"] == same["worker_pid"]  # under the bound: kept
    before = _restarts(s, "recycle")
    big = s.submit("alloc", {"mb": 300}, headers=WAIT).body
    assert big["status"] == "succeeded", big  # the job itself is fine; the worker is replaced after
    after = s.submit("noop", {}, headers=WAIT).body
    assert after["status"] == "succeeded"
    assert after["worker_pid"] != big["worker_pid"]
    assert _restarts(s, "recycle") == before + 1
    assert any("recycled with a peak of" in line for line in s.stderr_lines), s.log_tail()


def test_workers_that_cannot_boot(server_factory):
    s = server_factory("--process-workers", "2", "--diagnostic-fail-worker-boot", wait_ready=False)
    # Not ready, and it says why.
    def not_ready_reason():
        r = s.get("/readyz")
        if r.status == 503 and "fail to boot" in r.body.get("detail", ""):
            return r
        return None
    r = sy.wait_until(not_ready_reason, 10, interval=0.1, message="/readyz 503 with the reason")
    sy.assert_problem(r, 503, "not_ready")
    # Process-model jobs are refused at once instead of queueing forever; thread jobs run.
    r = s.request("POST", "/v1/jobs", {"type": "hash", "input": {"data": "x"}})
    sy.assert_problem(r, 503, "workers_unavailable")
    assert int(r.headers["Retry-After"]) >= 1
    io = s.submit("sleep", {"ms": 5}, headers=WAIT).body
    assert io["status"] == "succeeded"
    assert s.get("/healthz").status == 200
    # Respawn backs off: count boot attempts over a 4 s window.
    def attempts():
        return sum(1 for line in s.stderr_lines if "failing before hello on purpose" in line)
    first = attempts()
    time.sleep(4)
    during = attempts() - first
    assert during <= 12, f"{during} boot attempts in 4 s: the respawn loop does not back off"
    # The log says why, at error level.
    events = [json.loads(l) for l in s.stderr_lines if l.startswith("{")]
    assert any(e.get("level") == "error" and "boots failed in a row" in e.get("msg", "") for e in events), \
        s.log_tail()
    # It still shuts down cleanly.
    assert s.stop() == 0


def test_every_fault_at_once_leaves_other_jobs_unharmed(server_factory):
    s = server_factory("--process-workers", "2", "--worker-max-files", "64", "--worker-cpu-seconds", "2")
    bad = [
        {"type": "fork", "input": {"processes": 1000}},
        {"type": "open_files", "input": {"count": 10000}},
        {"type": "hang", "input": {}, "timeout_ms": 500},
        {"type": "crash", "input": {"signal": "SEGV"}},
        {"type": "burn", "input": {"ms": 5000}, "timeout_ms": 20000},
    ]
    good = [{"type": "primes", "input": {"n": 20000}}] * 10 + [{"type": "sleep", "input": {"ms": 20}}] * 10
    r = s.request("POST", "/v1/jobs:batch", {"jobs": bad + good})
    assert r.status == 202, r
    done = [s.wait_job(j["id"], timeout=30) for j in r.body["jobs"]]
    codes = [d["error"]["code"] if d["error"] else None for d in done[:len(bad)]]
    assert codes == ["process_limit", "file_limit", "timeout", "worker_crashed", "cpu_limit"], codes
    assert all(d["status"] == "succeeded" for d in done[len(bad):]), [d["status"] for d in done]
    assert {d["result"]["count"] for d in done[len(bad):len(bad) + 10]} == {2262}
    s.wait_pool(2)
    assert s.stop() == 0


def test_stuck_io_jobs_cannot_hold_the_thread_pool(server_factory):
    """200 http.request jobs to a peer that accepts and never answers: each ends timed_out at its
    deadline, and meanwhile other io jobs run at once on the same (unchanged) threads."""
    import socket
    s = server_factory("--process-workers", "1")
    hole = socket.socket()
    hole.bind((sy.HOST, 0))
    hole.listen(512)
    held = []
    stop = threading.Event()

    def accept_and_hold():
        hole.settimeout(0.1)
        for _ in range(2000):  # bounded; the test ends it sooner
            if stop.is_set():
                break
            try:
                conn, _ = hole.accept()
                held.append(conn)
            except OSError:
                continue
    t = threading.Thread(target=accept_and_hold, daemon=True)
    t.start()
    try:
        threads_before = s.thread_count()
        url = f"http://{sy.HOST}:{hole.getsockname()[1]}/never"
        r = s.request("POST", "/v1/jobs:batch",
                      {"jobs": [{"type": "http.request", "input": {"url": url}, "timeout_ms": 1000}] * 200})
        assert r.status == 202, r
        ids = [j["id"] for j in r.body["jobs"]]
        sy.wait_until(lambda: s.stats()["models"]["thread"]["running"] >= 150, 5, message="jobs stuck")
        t0 = time.monotonic()
        quick = s.submit("sleep", {"ms": 10}, headers=WAIT).body
        assert quick["status"] == "succeeded" and time.monotonic() - t0 < 1.0, quick
        assert s.thread_count() == threads_before
        for job_id in ids:
            final = s.wait_job(job_id, timeout=10)
            assert final["status"] == "timed_out" and final["error"]["code"] == "timeout", final
            assert final["run_ms"] < 3000, final
        assert s.stats()["models"]["thread"]["running"] == 0
    finally:
        stop.set()
        t.join(5)
        for c in held:
            c.close()
        hole.close()
