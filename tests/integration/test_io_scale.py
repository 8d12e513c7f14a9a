"""Thousands of io jobs in flight on a couple of threads; CPU work does not starve HTTP."""

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import sy_helpers as sy

N_BATCHES, BATCH = 2, 1000
SLEEP_MS = 1000


@pytest.fixture(scope="module")
def ios(module_server_factory):
    s = module_server_factory("--io-threads", "2", "--process-workers", "2")
    # warm up every code path once so lazily created threads (if any) exist before measuring
    s.wait_job(s.submit_ok("sleep", {"ms": 5})["id"])
    s.wait_job(s.submit_ok("primes", {"n": 1000})["id"])
    r = s.request("POST", "/v1/jobs:batch", {"jobs": [{"type": "sleep", "input": {"ms": 5}}] * 20})
    assert r.status == 202
    s.wait_job(r.body["jobs"][-1]["id"])
    s.wait_idle()
    s.metrics()
    return s


class _ThreadSampler:
    def __init__(self, pid, interval=0.01, max_samples=3000):
        self.pid, self.interval, self.max_samples = pid, interval, max_samples
        self.samples = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        for _ in range(self.max_samples):
            self.samples.append(sy.thread_count(self.pid))
            if self._stop.wait(self.interval):
                return

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(5)


def _terminal(models):
    t = models["thread"]
    return t["succeeded"] + t["failed"] + t["cancelled"] + t["timed_out"]


def test_2000_concurrent_sleeps_finish_fast_on_fixed_threads(ios):
    s = ios
    threads_before = s.thread_count()
    base = s.stats()["models"]["thread"]
    base_terminal, base_succeeded = _terminal({"thread": base}), base["succeeded"]
    total = N_BATCHES * BATCH
    ids = []
    last = None
    with _ThreadSampler(s.pid) as sampler:
        t0 = time.monotonic()
        for _ in range(N_BATCHES):
            r = s.request("POST", "/v1/jobs:batch",
                          {"jobs": [{"type": "sleep", "input": {"ms": SLEEP_MS}}] * BATCH},
                          timeout=30)
            assert r.status == 202, (r.status, str(r.body)[:300])
            assert len(r.body["jobs"]) == BATCH
            ids += [j["id"] for j in r.body["jobs"]]
        t_submitted = time.monotonic() - t0
        deadline = t0 + 10
        for _ in range(2000):
            last = s.stats()["models"]
            if _terminal(last) - base_terminal >= total or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        elapsed = time.monotonic() - t0
    threads_after = s.thread_count()

    assert len(set(ids)) == total
    assert _terminal(last) - base_terminal >= total, f"not all terminal after {elapsed:.1f}s"
    assert last["thread"]["succeeded"] - base_succeeded == total, last["thread"]
    assert elapsed < 3.0, (f"{total} x {SLEEP_MS} ms sleeps took {elapsed:.2f}s "
                           f"(submission alone {t_submitted:.2f}s)")
    assert threads_after == threads_before, (threads_before, threads_after)
    assert sampler.samples and set(sampler.samples) == {threads_before}, \
        f"thread count changed during the run: {sorted(set(sampler.samples))}"

    # every one of them succeeded, slept its full time, and they overlapped
    wanted, seen = set(ids), {}
    cursor = None
    for _ in range(20):
        q = "/v1/jobs?type=sleep&limit=1000" + (f"&cursor={cursor}" if cursor else "")
        page = s.get(q).body
        for j in page["jobs"]:
            if j["id"] in wanted:
                seen[j["id"]] = j
        cursor = page["next_cursor"]
        if cursor is None or len(seen) == total:
            break
    assert len(seen) == total
    bad = [j for j in seen.values() if j["status"] != "succeeded"
           or j["result"]["slept_ms"] < SLEEP_MS * 0.99 or j["worker_pid"] is not None]
    assert not bad, bad[:3]
    # Each started as it arrived, not behind busy threads (2 io threads would make all but 2 of
    # them wait a whole sleep or more); bounded by the submission's own time, which a sanitizer
    # build stretches (two batches took 1.09 s under TSan).
    lags = [(sy.parse_ts(j["started_at"]) - sy.parse_ts(j["created_at"])).total_seconds() for j in seen.values()]
    assert max(lags) < SLEEP_MS / 1000, f"a job waited {max(lags):.3f} s to start"
    starts = [sy.parse_ts(j["started_at"]) for j in seen.values()]
    assert (max(starts) - min(starts)).total_seconds() < t_submitted + 0.5, (max(starts) - min(starts), t_submitted)


def test_many_held_prefer_wait_requests(ios):
    """100 synchronous calls held open at once on 2 io threads: none blocks another."""
    s = ios
    threads_before = s.thread_count()

    def call(_):
        r = s.request("POST", "/v1/jobs", {"type": "sleep", "input": {"ms": 500}},
                      headers={"Prefer": "wait=10"}, timeout=20)
        return r.status, r.body.get("status") if isinstance(r.body, dict) else r.body

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(call, range(100)))
    elapsed = time.monotonic() - t0
    assert results == [(200, "succeeded")] * 100, [r for r in results if r != (200, "succeeded")]
    assert elapsed < 3.0, f"100 concurrent 500 ms calls took {elapsed:.2f}s"
    assert s.thread_count() == threads_before


def test_http_stays_responsive_while_workers_burn(ios):
    s = ios
    jobs = [s.submit_ok("burn", {"ms": 1500}) for _ in range(2)]
    for j in jobs:
        s.wait_status(j["id"], "running")
    lat = []
    for _ in range(10):
        t0 = time.monotonic()
        assert s.get("/healthz").status == 200
        assert s.get("/v1/stats").status == 200
        lat.append(time.monotonic() - t0)
    assert statistics.median(lat) < 0.2 and max(lat) < 1.0, lat
    assert s.stats()["models"]["process"]["busy"] == 2
    for j in jobs:
        assert s.wait_job(j["id"])["status"] == "succeeded"
