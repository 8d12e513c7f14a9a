"""Chaos: kill -9 random worker processes about every 100 ms while 2,000 cpu jobs run.

Every job must end in exactly one terminal state (the interrupted ones failed/worker_crashed,
the rest succeeded), no job may be left queued or running, and the pool must return to full
size. Bounded: at most 200 kills, and the whole test gives up after 150 s.
"""

import os
import random
import signal
import threading
import time

import sy_helpers as sy

JOBS = 2000
WORKERS = 2


def test_kill_9_random_workers_while_2000_cpu_jobs_run(server_factory):
    s = server_factory("--process-workers", str(WORKERS), "--queue-limit", "5000")
    ids = []
    for start in range(0, JOBS, 1000):
        batch = [{"type": "burn", "input": {"ms": 2}} for _ in range(min(1000, JOBS - start))]
        r = s.request("POST", "/v1/jobs:batch", {"jobs": batch}, timeout=60)
        assert r.status == 202, r
        ids += [j["id"] for j in r.body["jobs"]]
    assert len(set(ids)) == JOBS

    kills = []
    stop = threading.Event()
    rng = random.Random(1234)

    def killer():
        deadline = time.monotonic() + 90
        while not stop.is_set() and len(kills) < 200 and time.monotonic() < deadline:
            workers = sorted(sy.children_of(s.pid))
            if workers:
                pid = rng.choice(workers)
                try:
                    os.kill(pid, signal.SIGKILL)
                    kills.append(pid)
                except ProcessLookupError:
                    pass
            stop.wait(rng.uniform(0.05, 0.15))

    t = threading.Thread(target=killer, daemon=True)
    t.start()

    def all_done():
        st = s.stats()["models"]["process"]
        finished = st["succeeded"] + st["failed"] + st["cancelled"] + st["timed_out"]
        return finished >= JOBS and st["queued"] == 0 and st["running"] == 0
    try:
        sy.wait_until(all_done, 150, interval=0.2, message="every job terminal")
    finally:
        stop.set()
        t.join(10)

    assert len(kills) >= 10, f"only {len(kills)} kills: the chaos did not happen"
    statuses = {}
    for job_id in ids:
        job = s.job(job_id)
        assert job["status"] in sy.TERMINAL, job
        statuses[job["status"]] = statuses.get(job["status"], 0) + 1
        if job["status"] == "failed":
            assert job["error"]["code"] == "worker_crashed", job
            assert "SIGKILL" in job["error"]["message"], job
        else:
            assert job["status"] == "succeeded", job
    # Exactly one terminal state each: the counters add up to the number of jobs.
    st = s.stats()["models"]["process"]
    assert st["submitted"] == JOBS
    assert st["succeeded"] + st["failed"] == JOBS, st
    assert statuses.get("succeeded", 0) == st["succeeded"]
    # A kill fails at most the one job its worker was running (an idle worker's death fails none).
    assert statuses.get("failed", 0) <= len(kills), (statuses, len(kills))
    assert statuses.get("succeeded", 0) >= JOBS - len(kills)
    samples, _ = s.metrics()
    assert sy.metric_sum(samples, "switchyard_jobs_completed_total", model="process") == JOBS
    s.wait_pool(WORKERS, timeout=30)
    assert s.get("/readyz").status == 200
    print(f"chaos: {len(kills)} workers killed, {statuses}")
    assert s.stop() == 0


def test_an_idle_worker_killed_is_replaced_at_once(server_factory):
    s = server_factory("--process-workers", "2")
    victim = sorted(s.live_worker_pids())[0]
    os.kill(victim, signal.SIGKILL)
    # No job arrives to notice it: the pool must replace the worker by itself.
    sy.wait_until(lambda: victim not in s.live_worker_pids() and len(s.live_worker_pids()) == 2,
                  10, message="the killed idle worker replaced without any job")
    s.wait_pool(2)
    samples, _ = s.metrics()
    assert sy.metric_sum(samples, "switchyard_worker_restarts_total", reason="crash") == 1
    r = s.submit("hash", {"data": "x"}, headers={"Prefer": "wait=10"}).body
    assert r["status"] == "succeeded", r
