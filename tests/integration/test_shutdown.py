"""SIGTERM drain, drain grace, and no worker outliving the server."""

import http.client
import signal
import threading
import time

import sy_helpers as sy


class _HeldGet:
    """A GET ?wait= issued on a connection the server has already served once (so it is
    accepted and in a session, not in the listen backlog), completed in a background thread."""

    def __init__(self, server, path, timeout=30):
        self.result = None
        self.error = None
        self.conn = http.client.HTTPConnection(sy.HOST, server.port, timeout=timeout)
        self.conn.request("GET", "/healthz")
        r = self.conn.getresponse()
        r.read()
        assert r.status == 200
        self.conn.request("GET", path)
        self.thread = threading.Thread(target=self._finish, daemon=True)
        self.thread.start()

    def _finish(self):
        try:
            r = self.conn.getresponse()
            self.result = (r.status, sy._decode_body(r.headers, r.read()))
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e
        finally:
            self.conn.close()

    def join(self, timeout):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "held request never completed"
        assert self.error is None, f"held request failed: {self.error!r}"
        return self.result


def _assert_no_worker_survives(server):
    sy.wait_until(
        lambda: all(sy.identity_state(i) == "gone" for i in server.known_workers), 5,
        interval=0.05,
        message="every worker to be gone, not alive and not a zombie: " + ", ".join(
            f"{i[0]}={sy.identity_state(i)}" for i in server.known_workers))


def test_sigterm_drains(server_factory):
    """The in-memory store: queued jobs are cancelled at shutdown (nothing would run them later).
    The durable store keeps them instead: test_durability.py."""
    grace_ms = 5000
    s = server_factory("--process-workers", "1", "--drain-grace-ms", str(grace_ms), "--store", "memory")
    s.wait_pool(1)
    sleeper = s.submit_ok("sleep", {"ms": 2000})
    burner = s.submit_ok("burn", {"ms": 800})
    s.wait_status(sleeper["id"], "running")
    s.wait_status(burner["id"], "running")
    queued = [s.submit_ok("burn", {"ms": 100}) for _ in range(2)]
    queued.append(s.submit_ok("primes", {"n": 1000}))
    for q in queued:
        assert s.job(q["id"])["status"] == "queued"
    assert s.snapshot_workers(), "no worker process found"

    held_sleep = _HeldGet(s, f"/v1/jobs/{sleeper['id']}?wait=30")
    held_burn = _HeldGet(s, f"/v1/jobs/{burner['id']}?wait=30")
    time.sleep(0.2)  # let the server read the held requests before the signal

    t_term = time.monotonic()
    s.send_signal(signal.SIGTERM)

    sy.wait_until(lambda: s.get("/readyz", timeout=2).status == 503, 2, interval=0.02,
                  message="/readyz to answer 503 while draining")
    assert s.get("/healthz").status == 200, "healthz must stay 200 while the process serves"

    r = s.submit("sleep", {"ms": 1})
    sy.assert_problem(r, 503, "draining")
    assert (r.headers.get("Retry-After") or "").isdigit(), r.headers
    r = s.request("POST", "/v1/jobs:batch", {"jobs": [{"type": "sleep", "input": {"ms": 1}}]})
    sy.assert_problem(r, 503, "draining")

    for q in queued:
        job = s.wait_status(q["id"], sy.TERMINAL, timeout=2)
        assert job["status"] == "cancelled", job
        assert job["error"]["code"] == "shutdown", job
        assert job["started_at"] is None, job
    s.snapshot_workers()

    rc = s.wait_exit(grace_ms / 1000 + 5)
    elapsed = time.monotonic() - t_term
    assert rc == 0, f"exit code {rc} after {elapsed:.1f}s\n{s.log_tail()}"
    assert elapsed < grace_ms / 1000 + 3

    status, body = held_sleep.join(5)
    assert status == 200 and body["status"] == "succeeded", body
    status, body = held_burn.join(5)
    assert status == 200 and body["status"] == "succeeded", body
    _assert_no_worker_survives(s)


def test_drain_grace_expires(server_factory):
    grace_ms = 500
    s = server_factory("--process-workers", "1", "--drain-grace-ms", str(grace_ms))
    burner = s.submit_ok("burn", {"ms": 30000})
    sleeper = s.submit_ok("sleep", {"ms": 30000})
    s.wait_status(burner["id"], "running")
    s.wait_status(sleeper["id"], "running")
    s.snapshot_workers()
    t0 = time.monotonic()
    s.send_signal(signal.SIGTERM)
    rc = s.wait_exit(grace_ms / 1000 + 5)
    elapsed = time.monotonic() - t0
    assert rc == 0, f"exit code {rc}\n{s.log_tail()}"
    assert elapsed < grace_ms / 1000 + 4, f"took {elapsed:.1f}s with a {grace_ms} ms grace"
    _assert_no_worker_survives(s)


def test_idle_sigterm_exits_promptly(server_factory):
    s = server_factory("--process-workers", "2")
    s.wait_pool(2)
    t0 = time.monotonic()
    assert s.stop(timeout=10) == 0
    assert time.monotonic() - t0 < 3
    _assert_no_worker_survives(s)


def test_workers_die_with_a_killed_server(server_factory):
    s = server_factory("--process-workers", "2")
    s.wait_pool(2)
    idents = s.snapshot_workers()
    assert len(idents) >= 2
    s.proc.kill()
    s.proc.wait(timeout=10)
    # orphans are re-parented to whoever reaps them; dead (gone or zombie) is what matters
    sy.wait_until(lambda: all(sy.identity_state(i) != "alive" for i in idents), 5,
                  interval=0.05, message="workers to die with the server (PR_SET_PDEATHSIG)")
