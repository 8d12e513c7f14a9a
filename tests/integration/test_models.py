"""The two execution models: io jobs on threads, cpu jobs in worker processes."""

import base64
import hashlib

import sy_helpers as sy


def _assert_on_worker(server, job):
    assert job["model"] == "process", job
    pid = job["worker_pid"]
    assert isinstance(pid, int) and pid > 0, job
    assert pid != server.pid, "a process job ran inside the server process"
    st = sy.proc_stat(pid)
    assert st is not None, f"worker {pid} does not exist right after the job"
    assert st["ppid"] == server.pid, f"worker {pid} is not a child of the server ({st})"
    assert pid in server.worker_pids()


def test_sleep_runs_on_thread(server):
    job = server.submit_ok("sleep", {"ms": 20})
    assert job["model"] == "thread"
    final = server.wait_job(job["id"])
    assert final["status"] == "succeeded", final
    assert final["model"] == "thread"
    assert final["worker_pid"] is None


def test_primes_runs_on_worker_process(server):
    job = server.submit_ok("primes", {"n": 1000000})
    assert job["model"] == "process"
    final = server.wait_job(job["id"], timeout=30)
    assert final["status"] == "succeeded", final
    assert final["result"] == {"count": 78498}
    _assert_on_worker(server, final)
    assert final["cpu_ms"] > 0, final


def test_primes_small_values(server):
    expect = {1: 0, 2: 1, 10: 4, 100: 25}
    jobs = {n: server.submit_ok("primes", {"n": n})["id"] for n in expect}
    for n, jid in jobs.items():
        final = server.wait_job(jid)
        assert final["status"] == "succeeded", final
        assert final["result"]["count"] == expect[n], (n, final)


def test_hash_sha256_sha512_base64(server):
    cases = [
        ({"data": "abc"}, hashlib.sha256(b"abc").hexdigest()),
        ({"data": "abc", "algorithm": "sha256"}, hashlib.sha256(b"abc").hexdigest()),
        ({"data": "abc", "algorithm": "sha512"}, hashlib.sha512(b"abc").hexdigest()),
        ({"data": base64.b64encode(b"\x00\xffabc").decode(), "encoding": "base64"},
         hashlib.sha256(b"\x00\xffabc").hexdigest()),
        ({"data": "héllo", "encoding": "utf8"}, hashlib.sha256("héllo".encode()).hexdigest()),
    ]
    assert cases[0][1] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    ids = [(server.submit_ok("hash", inp)["id"], want) for inp, want in cases]
    for jid, want in ids:
        final = server.wait_job(jid)
        assert final["status"] == "succeeded", final
        assert final["result"]["hex"] == want, final
        _assert_on_worker(server, final)


def test_hash_iterations_changes_digest(server):
    one = server.wait_job(server.submit_ok("hash", {"data": "abc", "iterations": 1})["id"])
    many = server.wait_job(server.submit_ok("hash", {"data": "abc", "iterations": 1000})["id"])
    assert one["result"]["hex"] == hashlib.sha256(b"abc").hexdigest()
    assert many["status"] == "succeeded"
    assert len(many["result"]["hex"]) == 64 and many["result"]["hex"] != one["result"]["hex"]


def test_one_worker_reads_large_and_small_frames_in_turn(server_factory):
    # The worker reads its socket in pieces of 64 KiB: frames larger than a piece (and than the
    # socket's buffer), of a piece less a byte, a piece and a piece and a byte, and small ones,
    # in turn on one worker, each answered with the digest of its own data. A run frame is the
    # 28-byte header and {"input":{"data":"<n bytes>"},"type":"hash"}, 35 bytes more than n.
    s = server_factory("--process-workers", "1")
    piece = 65_536 - 28 - 35  # the data length whose frame is exactly one piece
    sizes = [300_000, 10, piece - 1, 5, piece, piece + 1, 70_000, 3, 1_000_000, 1]
    data = {n: "".join(chr(ord("a") + (i * 7 + n) % 26) for i in range(n)) for n in sizes}
    ids = [(n, s.submit_ok("hash", {"data": data[n]})["id"]) for n in sizes]
    pids = set()
    for n, jid in ids:
        final = s.wait_job(jid, timeout=30)
        assert final["status"] == "succeeded", (n, final)
        assert final["result"]["hex"] == hashlib.sha256(data[n].encode()).hexdigest(), n
        pids.add(final["worker_pid"])
    assert len(pids) == 1, f"the jobs did not share one worker: {pids}"


def test_concurrent_cpu_jobs_use_different_workers(server):
    a = server.submit_ok("burn", {"ms": 300})
    b = server.submit_ok("burn", {"ms": 300})
    fa, fb = server.wait_job(a["id"]), server.wait_job(b["id"])
    for f in (fa, fb):
        assert f["status"] == "succeeded", f
        _assert_on_worker(server, f)
        assert f["result"]["cpu_ms"] >= 300 * 0.95, f
    assert fa["worker_pid"] != fb["worker_pid"]
    # they overlapped in time: each started before the other finished
    sa, ea = sy.parse_ts(fa["started_at"]), sy.parse_ts(fa["finished_at"])
    sb, eb = sy.parse_ts(fb["started_at"]), sy.parse_ts(fb["finished_at"])
    assert sa < eb and sb < ea, "two cpu jobs on a 2-worker pool did not run in parallel"


def test_model_override_burn_on_thread(server):
    job = server.submit_ok("burn", {"ms": 50}, model="thread")
    assert job["model"] == "thread"
    final = server.wait_job(job["id"])
    assert final["status"] == "succeeded", final
    assert final["model"] == "thread"
    assert final["worker_pid"] is None
    assert final["result"]["cpu_ms"] >= 45, final
    assert final["cpu_ms"] >= 45, "the thread's CPU clock did not record the burn"


def test_model_override_sleep_on_process(server):
    job = server.submit_ok("sleep", {"ms": 30}, model="process")
    assert job["model"] == "process"
    final = server.wait_job(job["id"])
    assert final["status"] == "succeeded", final
    _assert_on_worker(server, final)


def test_explicit_auto_model(server):
    a = server.submit_ok("sleep", {"ms": 1}, model="auto")
    b = server.submit_ok("primes", {"n": 10}, model="auto")
    assert a["model"] == "thread" and b["model"] == "process"
    server.wait_job(a["id"])
    server.wait_job(b["id"])


def test_priority_and_fifo_within_model(server_factory):
    s = server_factory("--process-workers", "1")
    blocker = s.submit_ok("burn", {"ms": 500})
    s.wait_status(blocker["id"], "running")
    order = [("low-a", 0), ("high-a", 10), ("low-b", 0), ("neg", -5), ("high-b", 10),
             ("top", 1000)]
    ids = {}
    for name, prio in order:
        j = s.submit_ok("burn", {"ms": 20}, priority=prio)
        assert j["status"] == "queued" and j["priority"] == prio, j
        ids[name] = j["id"]
    finals = {name: s.wait_job(jid) for name, jid in ids.items()}
    for f in finals.values():
        assert f["status"] == "succeeded", f
    started = sorted(finals, key=lambda n: sy.parse_ts(finals[n]["started_at"]))
    assert started == ["top", "high-a", "high-b", "low-a", "low-b", "neg"], started


def test_crash_affects_only_its_worker(server):
    server.wait_pool(2)
    victim_bystander = server.submit_ok("burn", {"ms": 1500})
    server.wait_status(victim_bystander["id"], "running")
    crash = server.submit_ok("crash", {"signal": "SEGV"})
    fc = server.wait_job(crash["id"])
    assert fc["status"] == "failed" and fc["error"]["code"] == "worker_crashed", fc
    fb = server.wait_job(victim_bystander["id"])
    assert fb["status"] == "succeeded", fb
    assert fb["worker_pid"] != fc["worker_pid"]
    server.wait_pool(2)
    assert server.get("/healthz").status == 200


def test_workers_hold_no_server_descriptors(server):
    """A worker must not inherit the listening socket or client connections: it would keep the
    port bound and connections open after the server closed them."""
    import os
    server.wait_job(server.submit_ok("noop", {})["id"])  # a connection was open while workers ran
    pids = server.live_worker_pids()
    assert pids
    for pid in pids:
        fds = sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
        sockets = [fd for fd in fds if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")]
        assert sockets == [3], (pid, fds, sockets)
