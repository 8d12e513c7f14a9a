"""Per-worker limits and recycling: a job over its memory limit fails alone, workers are
replaced after N jobs, one at a time."""

import subprocess

import pytest

import sy_helpers as sy


def _restarts(server, reason):
    samples, _ = server.metrics()
    return sy.metric_sum(samples, "switchyard_worker_restarts_total", reason=reason) or 0


def _sanitized(binary):
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    return "sanitizer" in version


def test_workers_are_recycled_after_max_jobs(server_factory):
    s = server_factory("--process-workers", "1", "--worker-max-jobs", "3", "--worker-max-jobs-jitter", "0")
    pids = []
    for _ in range(7):
        r = s.submit("noop", {}, headers={"Prefer": "wait=10"})
        assert r.status == 200 and r.body["status"] == "succeeded", r.body
        pids.append(r.body["worker_pid"])
    assert pids[0] == pids[1] == pids[2]
    assert pids[3] == pids[4] == pids[5] != pids[0]
    assert pids[6] not in (pids[0], pids[3])
    assert _restarts(s, "recycle") == 2
    s.wait_pool(1)


def test_recycling_with_jitter_never_takes_the_whole_pool(server_factory):
    s = server_factory("--process-workers", "2", "--worker-max-jobs", "2", "--worker-max-jobs-jitter", "2")
    r = s.request("POST", "/v1/jobs:batch", {"jobs": [{"type": "noop", "input": {}}] * 60})
    assert r.status == 202
    runs = {}
    for job in r.body["jobs"]:
        done = s.wait_job(job["id"])
        assert done["status"] == "succeeded"  # recycling loses and fails nothing
        runs[done["worker_pid"]] = runs.get(done["worker_pid"], 0) + 1
    # How many recycles happen depends on how fast a worker boots (slow under sanitizers): while
    # one slot waits for its replacement, the other keeps running jobs past its quota.
    assert _restarts(s, "recycle") >= 1
    s.wait_pool(2)
    # A worker is replaced only after its quota (2 + up to 2 of jitter); one waiting for its turn
    # runs more. So every worker that is gone ran at least 2 jobs.
    gone = {pid: n for pid, n in runs.items() if pid not in s.live_worker_pids()}
    assert gone, runs
    assert min(gone.values()) >= 2, runs


def test_a_job_over_the_memory_limit_fails_alone(server_factory, switchyard_bin):
    if _sanitized(switchyard_bin):
        pytest.skip("sanitizer runtimes reserve address space, so RLIMIT_AS cannot be tested there")
    s = server_factory("--process-workers", "1", "--worker-memory-mb", "256")
    ok = s.submit("alloc", {"mb": 64}, headers={"Prefer": "wait=10"}).body
    assert ok["status"] == "succeeded", ok
    hog = s.submit("alloc", {"mb": 512}, headers={"Prefer": "wait=10"}).body
    assert hog["status"] == "failed" and hog["error"]["code"] == "memory_limit", hog
    after = s.submit("primes", {"n": 1000}, headers={"Prefer": "wait=10"}).body
    assert after["status"] == "succeeded"
    assert after["worker_pid"] != hog["worker_pid"]  # the worker that ran out was replaced
    assert _restarts(s, "memory") == 1
    assert s.get("/healthz").status == 200
