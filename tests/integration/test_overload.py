"""Sustained overload and SIGTERM in the middle of load.

Overload: about twice the process model's capacity for 60 s (SWITCHYARD_OVERLOAD_S overrides the
duration for local runs). Only 2xx and 429 come back, 429s carry a Retry-After computed from the
measured queue wait, /healthz stays fast, and the server's memory plateaus.

SIGTERM under load: every job a client saw accepted has a terminal state before the server exits
with 0, and no worker process is left, alive or zombie.

Traffic goes to 127.0.0.1 only; every loop is bounded in count and time.
"""

import http.client
import json
import os
import signal
import statistics
import subprocess
import threading
import time

import sy_helpers as sy

WORKERS = 2
BURN_MS = 50
CAPACITY = WORKERS * 1000 / BURN_MS      # jobs/s the process pool can finish
OFFERED = 2 * CAPACITY                   # submissions/s: twice that
QUEUE_LIMIT = 100                        # so a full queue holds 100 * 50 ms / 2 = 2.5 s of work


def _rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _sanitized(binary):
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    return "sanitizer" in out


class _Client:
    """A keep-alive connection that reconnects if the server closes it."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def request(self, method, path, body=None, headers=None, timeout=10):
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(sy.HOST, self.port, timeout=timeout)
            try:
                data = json.dumps(body).encode() if body is not None else None
                hdrs = dict(headers or {})
                if data is not None:
                    hdrs["Content-Type"] = "application/json"
                self.conn.request(method, path, body=data, headers=hdrs)
                r = self.conn.getresponse()
                payload = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.close()
                return r.status, r.headers, payload
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if attempt == 1:
                    raise
        raise AssertionError("unreachable")

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def test_overload_sheds_with_429_and_stays_healthy(server_factory, switchyard_bin):
    duration = float(os.environ.get("SWITCHYARD_OVERLOAD_S", "60"))
    s = server_factory("--process-workers", str(WORKERS), "--queue-limit", str(QUEUE_LIMIT),
                       "--retain-jobs", "1000")
    stop_at = time.monotonic() + duration
    statuses = {}
    retry_after = []
    errors = []
    lock = threading.Lock()
    senders = 4
    interval = senders / OFFERED  # each sender's pace

    def sender(k):
        c = _Client(s.port)
        next_t = time.monotonic() + k * interval / senders
        for _ in range(int(duration * OFFERED) + 10):
            now = time.monotonic()
            if now >= stop_at:
                break
            if next_t > now:
                time.sleep(next_t - now)
            next_t += interval
            try:
                status, headers, _ = c.request("POST", "/v1/jobs",
                                               {"type": "burn", "input": {"ms": BURN_MS}})
            except OSError as e:
                with lock:
                    errors.append(repr(e))
                continue
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 429:
                    retry_after.append(headers.get("Retry-After"))
        c.close()

    health_ms = []

    def prober():
        c = _Client(s.port)
        for _ in range(int(duration * 20) + 10):
            if time.monotonic() >= stop_at:
                break
            t0 = time.perf_counter()
            status, _, _ = c.request("GET", "/healthz")
            health_ms.append((time.perf_counter() - t0) * 1000)
            assert status == 200
            time.sleep(0.05)
        c.close()

    rss = []

    def sampler():
        for _ in range(int(duration) + 5):
            if time.monotonic() >= stop_at:
                break
            rss.append(_rss_kib(s.pid))
            time.sleep(1)

    threads = [threading.Thread(target=sender, args=(k,), daemon=True) for k in range(senders)]
    threads += [threading.Thread(target=prober, daemon=True), threading.Thread(target=sampler, daemon=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 30)
        assert not t.is_alive()

    total = sum(statuses.values())
    print(f"overload {duration:.0f}s: offered {OFFERED:.0f}/s for capacity {CAPACITY:.0f}/s; "
          f"statuses {statuses}; connection errors {len(errors)}")
    assert not errors, errors[:5]
    assert set(statuses) <= {202, 429}, statuses
    assert statuses.get(429, 0) > total * 0.2, f"overload not reached: {statuses}"
    assert statuses.get(202, 0) > CAPACITY * duration * 0.5, f"too little accepted: {statuses}"

    # Retry-After comes from the measured queue wait: a full queue holds about 2.5 s of work.
    values = [int(v) for v in retry_after]
    assert all(1 <= v <= 60 for v in values)
    assert max(values) >= 2, f"Retry-After never reflected the queue wait: {sorted(set(values))}"

    health_ms.sort()
    p99 = health_ms[int(len(health_ms) * 0.99) - 1]
    bound = 250 if _sanitized(switchyard_bin) else 50
    print(f"/healthz under overload: {len(health_ms)} probes, median "
          f"{statistics.median(health_ms):.2f} ms, p99 {p99:.2f} ms (bound {bound} ms)")
    assert p99 < bound, f"/healthz p99 {p99:.1f} ms under overload"

    # Memory plateaus: the second half grows no more than 10 % (+8 MiB of slack) over the first.
    half = len(rss) // 2
    first, second = max(rss[2:half]), max(rss[half:])
    print(f"server RSS: first half max {first / 1024:.1f} MiB, second half max {second / 1024:.1f} MiB")
    if not _sanitized(switchyard_bin):
        # Under ASan freed memory sits in a quarantine of up to 256 MiB by design, and TSan keeps
        # shadow and history memory: RSS grows there without a leak, so it is only reported.
        assert second <= first * 1.10 + 8192, rss

    # Nothing accepted was lost: every accepted job ends, and the pool is whole.
    sy.wait_until(lambda: s.stats()["models"]["process"]["queued"] == 0
                  and s.stats()["models"]["process"]["running"] == 0, 60, interval=0.2,
                  message="the queue to drain after the load")
    st = s.stats()["models"]["process"]
    assert st["submitted"] == statuses[202]
    assert st["succeeded"] == statuses[202], st
    s.wait_pool(WORKERS)


def test_sigterm_in_the_middle_of_load(server_factory):
    # Debug level logs every job's end (info logs only the notable ones), so that each job a
    # client saw accepted can be found ending before the exit.
    s = server_factory("--process-workers", str(WORKERS), "--drain-grace-ms", "5000",
                       "--queue-limit", "100000", "--log-level", "debug")
    accepted = []   # (id, status seen by the client)
    refused = {}
    errors = []
    lock = threading.Lock()
    stop = threading.Event()
    jobs = [{"type": "sleep", "input": {"ms": 300}}, {"type": "burn", "input": {"ms": 20}},
            {"type": "hash", "input": {"data": "x", "iterations": 100}}]

    def client(k):
        c = _Client(s.port)
        for i in range(100000):
            if stop.is_set():
                break
            headers = {"Prefer": "wait=10"} if i % 2 else None
            try:
                status, _, payload = c.request("POST", "/v1/jobs", jobs[(k + i) % len(jobs)],
                                               headers=headers, timeout=30)
            except OSError as e:
                with lock:
                    errors.append(repr(e))
                break  # the server is going away
            with lock:
                if status in (200, 202):
                    body = json.loads(payload)
                    accepted.append((body["id"], body["status"], status))
                else:
                    refused[status] = refused.get(status, 0) + 1
                    if status == 503:
                        break
        c.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(6)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    s.snapshot_workers()
    n_before = len(accepted)
    t0 = time.monotonic()
    s.send_signal(signal.SIGTERM)
    rc = s.wait_exit(20)
    took = time.monotonic() - t0
    stop.set()
    for t in threads:
        t.join(15)
        assert not t.is_alive()
    assert rc == 0, f"exit code {rc}\n{s.log_tail()}"
    assert took < 10, f"drain took {took:.1f} s"
    assert n_before >= 20, "the load never got going"
    assert set(refused) <= {503}, refused

    # Clients that waited saw terminal states; every accepted job had one before exit.
    for job_id, status, code in accepted:
        if code == 200:
            assert status in sy.TERMINAL, (job_id, status)
    s.join_logs()
    events = [json.loads(line) for line in s.stderr_lines if line.startswith("{")]
    drained = [e for e in events if e.get("msg") == "drained"]
    assert drained, s.log_tail()
    assert drained[-1]["jobs_not_terminal"] == 0, drained[-1]
    assert drained[-1]["jobs_accepted"] >= len(accepted), (drained[-1], len(accepted))
    assert drained[-1]["workers_left"] == 0
    finished = [e for e in events if e.get("msg") == "job finished"]
    finished_ids = {e["job_id"] for e in finished if e.get("status") in sy.TERMINAL}
    missing = [j for j, _, _ in accepted if j not in finished_ids]
    # The durable store keeps jobs that had not finished for the next start: exactly those the
    # log counted, and a restart on the same data finishes them.
    left = drained[-1]["jobs_left_for_restart"]
    assert len(missing) <= left, f"{len(missing)} accepted jobs never finished: {missing[:5]}"
    if missing:
        s2 = server_factory("--process-workers", str(WORKERS), "--data-dir", os.path.join(s.cwd, "data"))
        for job_id in missing:
            assert s2.wait_job(job_id, timeout=30)["status"] in sy.TERMINAL
    # No orphan and no zombie.
    sy.wait_until(lambda: all(sy.identity_state(i) == "gone" for i in s.known_workers), 5,
                  message="no worker left alive or zombie")
    print(f"SIGTERM under load: {len(accepted)} accepted ({n_before} before the signal), "
          f"refused {refused}, drain {took:.2f} s")
