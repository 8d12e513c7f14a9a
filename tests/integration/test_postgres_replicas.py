"""Several replicas sharing one queue in PostgreSQL (`--store postgres`), against a real PostgreSQL
that the tests start in a temporary directory on a loopback port (see pg_helpers.py).

Every replica serves the whole API: a job submitted to one is read, waited on, listed and
cancelled through the others. The proof at the end runs 3,000 jobs on three replicas, kills one
with SIGKILL mid-run, and reads an append-only file written by the jobs themselves (the
diagnostic type `append_log`) to show that no job ever ran twice at the same moment, while every
accepted job still reached exactly one terminal state under the attempt rule.

Skipped when the PostgreSQL server binaries are not installed (Debian package postgresql).
"""
import contextlib
import faulthandler
import os
import random
import signal
import threading
import time
import urllib.parse
import uuid
from collections import Counter, namedtuple

import pytest

import pg_helpers
import sy_helpers as sy

LEASE_MS = 2000
WATCHDOG_S = 170  # the proof's own bounds add up to more than conftest's 120 s per test


@pytest.fixture(autouse=True)
def _watchdog():
    faulthandler.dump_traceback_later(WATCHDOG_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@contextlib.contextmanager
def replicas(binary, count, process_workers):
    """A fresh PostgreSQL and `count` replicas sharing it. On exit the replicas are killed (with
    their workers) before the database stops."""
    if pg_helpers.pg_bin_dir() is None:
        pytest.skip("PostgreSQL server binaries not found (Debian package postgresql)")
    with pg_helpers.TempPostgres() as pg:
        servers = []
        try:
            for _ in range(count):
                servers.append(sy.Server(binary, ("--store", "postgres", "--database-url", pg.url,
                                                  "--lease-ms", LEASE_MS,
                                                  "--process-workers", process_workers)))
                servers[-1].start()  # one at a time: each migrates the schema at start-up
            yield servers
        finally:
            for s in reversed(servers):
                s.kill()


def starts_in(log, count):
    """{tag: pid} of the start lines once the file holds `count` lines, else None."""
    lines = sy.read_log(log, in_progress=True)
    return {tag: pid for event, tag, pid, _ in lines if event == "start"} if len(lines) == count else None


def runner_of(worker_pid, servers):
    """The replica whose worker process `worker_pid` is."""
    parent = (sy.proc_stat(worker_pid) or {}).get("ppid")
    (owner,) = [s for s in servers if s.pid == parent]
    return owner


def other_than(server, servers):
    return next(s for s in servers if s is not server)


# --- every replica serves the whole API ------------------------------------------------------

@pytest.fixture(scope="class")
def trio(switchyard_bin):
    with replicas(switchyard_bin, 3, process_workers=2) as servers:
        yield servers


class TestEveryReplicaServesTheWholeApi:
    @pytest.fixture(autouse=True)
    def _cancel_leftovers(self, trio):
        """A test that fails half-way must not leave the next one a busy cluster."""
        yield
        for job_id in sy.list_all(trio[0], status="queued") | sy.list_all(trio[0], status="running"):
            trio[0].request("DELETE", f"/v1/jobs/{job_id}")

    def test_read_and_wait_through_other_replicas(self, trio):
        a, b, c = trio
        job = a.submit_ok("sleep", {"ms": 1500})
        seen = b.job(job["id"])
        assert seen["input"] == {"ms": 1500} and seen["status"] in ("queued", "running"), seen

        t0 = time.monotonic()
        r = c.get(f"/v1/jobs/{job['id']}?wait=30", timeout=40)
        assert r.status == 200 and r.body["status"] == "succeeded", (r.status, r.body)
        assert time.monotonic() - t0 < 1.5 + 0.6, "?wait= on C did not wake when the job ended elsewhere"
        assert r.body["attempts"] == 1 and r.body["result"]["slept_ms"] >= 1500, r.body

        for server in trio:  # a synchronous call through each replica, whichever replica runs it
            t0 = time.monotonic()
            r = server.submit("sleep", {"ms": 200}, headers={"Prefer": "wait=60"})
            assert r.status == 200 and r.body["status"] == "succeeded", (r.status, r.body)
            assert time.monotonic() - t0 < 0.2 + 0.6, "Prefer: wait did not wake when the job ended"

    def test_prefer_wait_answers_the_job_as_stored(self, trio):
        # The replica that ran a job answers its own waiters from the end it committed, without a
        # read; a job that ran elsewhere is read. Either way the answer is the stored job, field
        # for field, as every replica reads it afterwards: both models, a success and a failure.
        kinds = (("noop", {}, "thread", "succeeded"), ("noop", {}, "process", "succeeded"),
                 ("sleep", {"ms": 30}, "thread", "succeeded"), ("crash", {"signal": "ABRT"}, "process", "failed"))
        answered_by = Counter()
        for i in range(24):
            server = trio[i % 3]
            job_type, input_, model, status = kinds[i % len(kinds)]
            r = server.submit(job_type, input_, model=model, headers={"Prefer": "wait=30"})
            assert r.status == 200 and r.body["status"] == status, (r.status, r.body)
            for reader in trio:
                assert reader.job(r.body["id"]) == r.body, (trio.index(server), trio.index(reader))
            if model == "process" and status == "succeeded":  # the worker lives on: whose is it?
                answered_by["same replica" if runner_of(r.body["worker_pid"], trio) is server else "other"] += 1
        print(f"process jobs answered by the replica that ran them or another: {dict(answered_by)}")

    def test_work_submitted_to_one_replica_spreads_over_all(self, trio, tmp_path):
        a, b, _ = trio
        log = str(tmp_path / "spread.log")
        items = [{"type": "append_log", "input": {"path": log, "tag": f"spread-{i}", "ms": 300}}
                 for i in range(12)]
        r = a.request("POST", "/v1/jobs:batch", {"jobs": items})
        assert r.status == 202, (r.status, r.body)
        finals = [b.wait_job(job["id"], timeout=30) for job in r.body["jobs"]]
        assert all(f["status"] == "succeeded" and f["result"]["pid"] == f["worker_pid"] for f in finals), finals
        ran_on = Counter(trio.index(runner_of(f["worker_pid"], trio)) for f in finals)
        print(f"12 jobs submitted to replica 0 ran on replicas {dict(sorted(ran_on.items()))}")
        assert len(ran_on) >= 2, f"one replica ran every job: {ran_on}"

    def test_cancel_running_jobs_through_another_replica(self, trio, tmp_path):
        a, b, c = trio
        log = str(tmp_path / "cancel.log")
        sleeper = a.submit_ok("sleep", {"ms": 60_000})
        on_thread = a.submit_ok("append_log", {"path": log, "tag": "thread", "ms": 60_000}, model="thread")
        in_worker = a.submit_ok("append_log", {"path": log, "tag": "process", "ms": 60_000})
        assert (sleeper["model"], on_thread["model"], in_worker["model"]) == ("thread", "thread", "process")
        starts = sy.wait_until(lambda: starts_in(log, 2), 10, message="both start lines")
        c.wait_status(sleeper["id"], "running")
        (thread_runner,) = [s for s in trio if s.pid == starts["thread"]]  # a thread run writes the server's pid
        process_runner = runner_of(starts["process"], trio)

        cancelled_at = time.monotonic()
        for job, through in ((sleeper, b), (on_thread, other_than(thread_runner, trio)),
                             (in_worker, other_than(process_runner, trio))):
            r = through.request("DELETE", f"/v1/jobs/{job['id']}")
            assert r.status == 200, (r.status, r.body)
            # The job as it stands: the replica running it may not have stopped it yet.
            assert r.body["status"] in ("running", "cancelled"), r.body
        for job in (sleeper, on_thread, in_worker):
            final = c.wait_status(job["id"], "cancelled", timeout=5)
            assert final["error"]["code"] == "cancelled" and final["attempts"] == 1, final
        assert time.monotonic() - cancelled_at < 5

        # The thread run saw its stop flag; the worker was killed before it could write anything.
        events = [(event, tag, pid) for event, tag, pid, _ in sy.read_log(log)]
        assert sorted(events) == sorted([("start", "thread", starts["thread"]), ("stop", "thread", starts["thread"]),
                                         ("start", "process", starts["process"])]), events
        sy.wait_until(lambda: starts["process"] not in process_runner.live_worker_pids(), 5,
                      message="the cancelled job's worker to be killed")
        # Cancelled is final: no replica takes the jobs up again once their leases lapse.
        time.sleep(LEASE_MS / 1000 + 1)
        assert len(sy.read_log(log)) == 3, sy.read_log(log)
        for server in trio:
            for job in (sleeper, on_thread, in_worker):
                assert server.job(job["id"])["status"] == "cancelled"

    def test_cancel_a_queued_job_through_another_replica(self, trio, tmp_path):
        a, b, c = trio
        log = str(tmp_path / "queued.log")
        for server in trio:  # the workers killed by earlier cancels are back
            server.wait_pool(2)
        # Two workers per replica: six long jobs take every worker of the cluster.
        blockers = [trio[i % 3].submit_ok("append_log", {"path": log, "tag": f"block-{i}", "ms": 60_000})
                    for i in range(6)]
        for job in blockers:
            b.wait_status(job["id"], "running", timeout=15)
        # Running means started: a replica claims only what its free workers can start.
        sy.wait_until(lambda: len(sy.read_log(log, in_progress=True)) == 6, 5, message="all six blockers started in a worker")
        waiting = a.submit_ok("append_log", {"path": log, "tag": "never", "ms": 1})
        assert b.job(waiting["id"])["status"] == "queued"
        # The queue is the shared one: every replica reports its length (refreshed every second).
        sy.wait_until(lambda: all(s.stats()["models"]["process"]["queued"] == 1 for s in trio), 5,
                      message="every replica's stats show the one queued job")
        assert all(sy.metric_sum(s.metrics()[0], "switchyard_jobs_queued", model="process") == 1 for s in trio)

        r = c.request("DELETE", f"/v1/jobs/{waiting['id']}")
        assert r.status == 200 and r.body["status"] == "cancelled", (r.status, r.body)
        for server in trio:
            final = server.job(waiting["id"])
            assert final["status"] == "cancelled" and final["started_at"] is None and final["attempts"] == 0, final
        for i, job in enumerate(blockers):
            r = trio[(i + 1) % 3].request("DELETE", f"/v1/jobs/{job['id']}")
            assert r.status == 200, (r.status, r.body)
        for job in blockers:
            a.wait_status(job["id"], "cancelled", timeout=5)
        time.sleep(LEASE_MS / 1000 + 1)  # the workers are free again: the cancelled job must not run
        assert "never" not in {tag for _, tag, _, _ in sy.read_log(log)}
        assert b.job(waiting["id"])["status"] == "cancelled"

    def test_idempotency_keys_hold_across_replicas(self, trio):
        a, b, c = trio
        key = {"Idempotency-Key": f"replicas-{uuid.uuid4()}"}
        body = {"type": "sleep", "input": {"ms": 301}}
        first = a.request("POST", "/v1/jobs", body, headers=key)
        assert first.status == 202, (first.status, first.body)
        again = b.request("POST", "/v1/jobs", body, headers=key)
        assert again.status in (200, 202) and again.body["id"] == first.body["id"], (again.status, again.body)
        sy.assert_problem(c.request("POST", "/v1/jobs", {"type": "sleep", "input": {"ms": 302}}, headers=key),
                          409, "conflict")

        key = {"Idempotency-Key": f"replicas-batch-{uuid.uuid4()}"}
        items = [{"type": "sleep", "input": {"ms": 303}}, {"type": "noop"}]
        first = a.request("POST", "/v1/jobs:batch", {"jobs": items}, headers=key)
        assert first.status == 202, (first.status, first.body)
        again = b.request("POST", "/v1/jobs:batch", {"jobs": items}, headers=key)
        assert again.status in (200, 202), (again.status, again.body)
        assert [j["id"] for j in again.body["jobs"]] == [j["id"] for j in first.body["jobs"]]
        sy.assert_problem(c.request("POST", "/v1/jobs:batch", {"jobs": items[:1]}, headers=key), 409, "conflict")

        # The same key on all three replicas at the same moment: one job.
        key = {"Idempotency-Key": f"replicas-race-{uuid.uuid4()}"}
        body = {"type": "sleep", "input": {"ms": 304}}
        answers = [None] * 3
        gate = threading.Barrier(3)

        def post(i):
            gate.wait()
            answers[i] = trio[i].request("POST", "/v1/jobs", body, headers=key)

        threads = [threading.Thread(target=post, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert all(r is not None and r.status in (200, 202) for r in answers), answers
        assert len({r.body["id"] for r in answers}) == 1, answers
        for ms in (301, 303, 304):
            created = [j for j in sy.list_all(c, type="sleep").values() if j["input"] == {"ms": ms}]
            assert len(created) == 1, f"{len(created)} jobs for sleep {ms}"
            c.wait_job(created[0]["id"])

    def test_every_replica_lists_every_job(self, trio):
        ids = [server.submit_ok("noop")["id"] for server in trio]
        for job_id in ids:
            trio[0].wait_job(job_id)
        listings = [sy.list_all(server) for server in trio]
        assert set(ids) <= set(listings[0])
        for listing in listings[1:]:
            assert set(listing) == set(listings[0])
            for job_id, job in listings[0].items():
                if job["status"] in sy.TERMINAL:
                    assert listing[job_id]["status"] == job["status"], (job, listing[job_id])
        assert set(sy.list_all(trio[1], type="noop")) == {i for i, j in listings[0].items() if j["type"] == "noop"}

        # A cursor from one replica is good on another (clients behind a load balancer).
        first = trio[0].get("/v1/jobs?limit=2").body
        second = trio[1].get("/v1/jobs?" + urllib.parse.urlencode({"limit": 2, "cursor": first["next_cursor"]}))
        assert second.status == 200, (second.status, second.body)
        newest = sorted(listings[0], reverse=True)
        assert [j["id"] for j in first["jobs"] + second.body["jobs"]] == newest[:4]


# --- the proof: kill -9 of a replica under 3,000 jobs ----------------------------------------

JOBS = 3000
Run = namedtuple("Run", "tag pid start end how")  # how: "end", "stop" or "killed"


@pytest.fixture
def proof_trio(switchyard_bin):
    with replicas(switchyard_bin, 3, process_workers=3) as servers:
        yield servers


def mixed_jobs(log):
    """Thirds of append_log (process, 20..200 ms, 3 attempts), sleep (thread, 1..5 ms, 2 attempts)
    and noop (process, 1 attempt), interleaved; a fixed seed keeps runs comparable."""
    rng = random.Random(7)
    jobs = []
    for i in range(JOBS):
        if i % 3 == 0:
            jobs.append({"type": "append_log", "model": "process", "max_attempts": 3,
                         "input": {"path": log, "tag": f"j{i}", "ms": rng.randint(20, 200)}})
        elif i % 3 == 1:
            jobs.append({"type": "sleep", "model": "thread", "max_attempts": 2, "input": {"ms": rng.randint(1, 5)}})
        else:
            jobs.append({"type": "noop"})
    return jobs


def runs_in(lines, kill_ns):
    """Each run of each tag, from its start line to its end or stop line. A start with neither is
    a run that died with its replica: it is taken to have lasted until `kill_ns`."""
    open_runs, runs = {}, []
    for event, tag, pid, ns in lines:
        if event == "start":
            assert (tag, pid) not in open_runs, f"{tag} started twice in pid {pid} without ending"
            open_runs[(tag, pid)] = ns
        else:
            assert (tag, pid) in open_runs, f"{event} of {tag} in pid {pid} without a start"
            runs.append(Run(tag, pid, open_runs.pop((tag, pid)), ns, event))
    runs += [Run(tag, pid, start, kill_ns, "killed") for (tag, pid), start in open_runs.items()]
    return runs


def count_done(server, at_least):
    """How many jobs have succeeded, counting no further than the first page past `at_least`."""
    done, cursor = 0, None
    for _ in range(100):
        query = {"status": "succeeded", "limit": 1000, **({"cursor": cursor} if cursor else {})}
        body = server.get("/v1/jobs?" + urllib.parse.urlencode(query), timeout=60).body
        done += len(body["jobs"])
        cursor = body["next_cursor"]
        if done >= at_least or not cursor:
            return done
    return done


def test_kill9_of_a_replica_never_runs_a_job_twice_at_once(proof_trio, tmp_path):
    log = str(tmp_path / "proof.log")
    specs = mixed_jobs(log)
    accepted = {}  # id -> the request that created it
    t_start = time.monotonic()
    for n in range(JOBS // 100):  # batches of 100, round-robin over the replicas
        batch = specs[n * 100:(n + 1) * 100]
        r = proof_trio[n % 3].request("POST", "/v1/jobs:batch", {"jobs": batch}, timeout=60)
        assert r.status == 202, (r.status, r.body)
        accepted.update((job["id"], spec) for job, spec in zip(r.body["jobs"], batch))
    assert len(accepted) == JOBS

    victim, survivors = proof_trio[2], proof_trio[:2]
    sy.wait_until(lambda: count_done(survivors[0], JOBS // 3) >= JOBS // 3, 45, interval=0.2,
                  message=f"{JOBS // 3} jobs done before the kill")
    victim_workers = victim.snapshot_workers()
    victim_pids = {pid for pid, _ in victim_workers}
    hold_ms = {spec["input"]["tag"]: spec["input"]["ms"] for spec in specs if spec["type"] == "append_log"}

    def victim_mid_run():
        """A worker of the victim is at least 20 ms away from the end of an append_log run."""
        lines = sy.read_log(log, in_progress=True)
        ended = {(tag, pid) for event, tag, pid, _ in lines if event != "start"}
        now = time.monotonic_ns()
        return any(event == "start" and (tag, pid) not in ended and pid in victim_pids
                   and ns + hold_ms[tag] * 1_000_000 - now > 20_000_000 for event, tag, pid, ns in lines)

    # Killed in the middle of a run, so that the file has a run cut short to check.
    sy.wait_until(victim_mid_run, 10, interval=0.005, message="the replica to kill in the middle of a run")
    kill_sent_ns = time.monotonic_ns()
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait_exit(10) is not None
    sy.wait_until(lambda: all(sy.identity_state(w) != "alive" for w in victim_workers), 10,
                  message="the killed replica's workers to die with it")
    kill_ns = time.monotonic_ns()  # after this, nothing of the victim can write a line
    done_before = count_done(survivors[0], JOBS)
    assert done_before < JOBS, "everything finished before the kill; the test proves nothing"

    def all_terminal():
        return not any(sy.list_all(survivors[0], status=status) for status in ("queued", "running"))

    sy.wait_until(all_terminal, 90, interval=0.5, message="every job terminal after the kill")
    finish_s = (time.monotonic_ns() - kill_ns) / 1e9

    # Exactly one terminal state per accepted job, the same through both survivors.
    jobs = sy.list_all(survivors[0])
    assert set(jobs) == set(accepted), (len(set(accepted) - set(jobs)), len(set(jobs) - set(accepted)))
    again = sy.list_all(survivors[1])
    assert {i: (j["status"], j["attempts"], j["finished_at"]) for i, j in again.items()} == \
        {i: (j["status"], j["attempts"], j["finished_at"]) for i, j in jobs.items()}
    by_status = Counter()
    for job_id, job in jobs.items():
        assert job["type"] == accepted[job_id]["type"] and job["input"] == accepted[job_id].get("input", {}), job
        assert 1 <= job["attempts"] <= job["max_attempts"], job
        if job["status"] == "failed":
            assert job["error"]["code"] == "interrupted" and job["attempts"] == job["max_attempts"], job
        else:
            assert job["status"] == "succeeded", job
        by_status[(job["type"], job["status"])] += 1
    assert sum(by_status.values()) == JOBS
    assert Counter(job["type"] for job in jobs.values()) == Counter(spec["type"] for spec in accepted.values())

    # The file: whole lines only, written by workers of the three replicas and nothing else.
    survivor_pids = {pid for s in survivors for pid, _ in s.snapshot_workers()}
    lines = sy.read_log(log)
    assert {pid for _, _, pid, _ in lines} <= victim_pids | survivor_pids
    assert victim_pids & {pid for _, _, pid, _ in lines}, "the killed replica never ran an append_log job"
    assert not [line for line in lines if line[0] == "stop"], "nothing was cancelled, yet a run stopped"
    runs = runs_in(lines, kill_ns)
    cut_short = [run for run in runs if run.how == "killed"]
    assert all(run.pid in victim_pids and run.start < kill_ns for run in cut_short), cut_short
    assert cut_short, "the killed replica was running no append_log job; the test proves nothing"

    runs_of = {}
    for run in runs:
        runs_of.setdefault(run.tag, []).append(run)
    tags = {spec["input"]["tag"]: job_id for job_id, spec in accepted.items() if spec["type"] == "append_log"}
    assert set(runs_of) <= set(tags)
    for tag, job_id in tags.items():
        job, tag_runs = jobs[job_id], sorted(runs_of.get(tag, []), key=lambda run: run.start)
        # No two runs of one job overlap, counting a run cut short as lasting until the kill.
        for earlier, later in zip(tag_runs, tag_runs[1:]):
            assert later.start >= earlier.end, f"{tag} ran twice at once: {earlier} and {later}"
        assert len(tag_runs) <= job["attempts"], (tag_runs, job)
        # Only the killed replica leaves a run that is not the job's last.
        assert all(run.pid in victim_pids for run in tag_runs[:-1]), (tag_runs, job)
        if job["status"] == "succeeded":
            last, result = tag_runs[-1], job["result"]
            assert (last.how, last.pid, last.start, last.end) == \
                ("end", result["pid"], result["started_ns"], result["ended_ns"]), (tag_runs, job)
            assert result["pid"] == job["worker_pid"], job

    cut_tags = {run.tag for run in cut_short}
    rerun_gaps_ms = [round((run.start - kill_sent_ns) / 1e6) for run in runs
                     if run.tag in cut_tags and run.pid not in victim_pids]
    failed = sum(n for (_, status), n in by_status.items() if status == "failed")
    print(f"\n{JOBS} jobs on 3 replicas, one killed after {done_before} were done: {len(cut_short)} append_log "
          f"runs cut short, {sum(1 for job in jobs.values() if job['attempts'] > 1)} jobs started again, "
          f"{failed} failed interrupted; first re-run of a cut-short job {min(rerun_gaps_ms, default=None)} ms after the kill "
          f"(lease {LEASE_MS} ms); survivors finished {finish_s:.1f} s after the kill, "
          f"{time.monotonic() - t_start:.1f} s in all; {dict(by_status)}")


# --- a replica cut off from the database ------------------------------------------------------

def test_a_replica_cut_off_from_the_database_stops_its_jobs_before_another_takes_them(switchyard_bin, tmp_path):
    """Fencing: replica B loses the database (its role may no longer log in, its sessions are
    ended) while it runs a job. B cannot renew its lease, so it must stop the job itself before
    the lease runs out; only then may A take the job over. The job's worker process on B is
    watched from here: it must be gone before A's run starts."""
    if pg_helpers.pg_bin_dir() is None:
        pytest.skip("PostgreSQL server binaries not found (Debian package postgresql)")
    log = str(tmp_path / "fence.log")
    with pg_helpers.TempPostgres() as pg:
        pg.psql("CREATE ROLE replica_b LOGIN SUPERUSER")
        b_url = pg.url.replace("switchyard@", "replica_b@")
        flags = ("--store", "postgres", "--lease-ms", LEASE_MS, "--process-workers", 1)
        b = sy.Server(switchyard_bin, flags + ("--database-url", b_url))
        a = sy.Server(switchyard_bin, flags + ("--database-url", pg.url))
        try:
            b.start()
            job = b.submit_ok("append_log", {"path": log, "tag": "fenced", "ms": 6000}, max_attempts=2)
            b_worker = sy.wait_until(lambda: starts_in(log, 1), 10, message="B's run started")["fenced"]
            assert runner_of(b_worker, [b]) is b
            a.start()

            gone_ns = []
            def watch():  # when B's worker stops existing (or is a zombie), by the jobs' clock
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    state = (sy.proc_stat(b_worker) or {}).get("state")
                    if state in (None, "Z"):
                        gone_ns.append(time.monotonic_ns())
                        return
                    time.sleep(0.005)
            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            cut_ns = time.monotonic_ns()
            pg.psql("ALTER ROLE replica_b NOLOGIN")
            pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'replica_b'")

            watcher.join(timeout=30)
            assert gone_ns, "B kept running the job after it lost the database"
            stopped_after_ms = (gone_ns[0] - cut_ns) / 1e6
            assert stopped_after_ms < LEASE_MS, f"B stopped its job {stopped_after_ms:.0f} ms after the cut"
            assert b.request("GET", "/readyz", timeout=5).status == 503, "B says ready without its database"

            final = a.wait_job(job["id"], timeout=30)
            assert final["status"] == "succeeded" and final["attempts"] == 2, final
            runs = [(event, pid, ns) for event, tag, pid, ns in sy.read_log(log) if tag == "fenced"]
            (a_start,) = [ns for event, pid, ns in runs if event == "start" and pid != b_worker]
            assert a_start > gone_ns[0], "A's run began while B's worker still ran the job"
            print(f"B stopped its job {stopped_after_ms:.0f} ms after losing the database; A started it "
                  f"{(a_start - gone_ns[0]) / 1e6:.0f} ms later (lease {LEASE_MS} ms)")

            pg.psql("ALTER ROLE replica_b LOGIN")  # back: B is ready again and serves the job
            sy.wait_until(lambda: b.request("GET", "/readyz", timeout=5).status == 200, 15,
                          message="B ready again once the database is back")
            assert b.job(job["id"])["status"] == "succeeded"
        finally:
            a.kill()
            b.kill()


def test_sigterm_answers_long_polls_and_hands_running_jobs_to_the_others(switchyard_bin, tmp_path):
    """A replica that drains answers its open long-polls at once (a job running elsewhere would
    not wake them), and a job it had to stop at the end of its grace goes back to the shared
    queue, where another replica runs it as its next attempt."""
    if pg_helpers.pg_bin_dir() is None:
        pytest.skip("PostgreSQL server binaries not found (Debian package postgresql)")
    log = str(tmp_path / "handover.log")
    with pg_helpers.TempPostgres() as pg:
        flags = ("--store", "postgres", "--database-url", pg.url, "--lease-ms", LEASE_MS, "--process-workers", 1)
        a = sy.Server(switchyard_bin, flags + ("--drain-grace-ms", 300))
        b = sy.Server(switchyard_bin, flags)
        try:
            a.start()
            b.start()
            # One worker each: two long jobs, one on each replica.
            jobs = [a.submit_ok("append_log", {"path": log, "tag": f"long-{i}", "ms": 2500}, max_attempts=2)
                    for i in range(2)]
            starts = sy.wait_until(lambda: starts_in(log, 2), 10, message="both jobs started")
            on_a = next(j for j in jobs if runner_of(starts[j["input"]["tag"]], [a, b]) is a)
            on_b = next(j for j in jobs if j is not on_a)

            holder = {}
            def poll():
                t0 = time.monotonic()
                holder["r"] = a.get(f"/v1/jobs/{on_b['id']}?wait=60", timeout=90)
                holder["s"] = time.monotonic() - t0
            poller = threading.Thread(target=poll, daemon=True)
            poller.start()
            time.sleep(0.3)  # the long-poll waits on A
            a.send_signal(signal.SIGTERM)
            assert a.wait_exit(20) == 0, a.log_tail()
            poller.join(timeout=30)
            r = holder["r"]
            assert r.status == 200 and r.body["status"] in ("running", "succeeded"), (r.status, r.body)
            assert holder["s"] < 2.5, f"the long-poll waited {holder['s']:.1f} s through the shutdown"

            final = b.wait_job(on_a["id"], timeout=20)
            assert final["status"] == "succeeded" and final["attempts"] == 2, final
            assert runner_of(final["worker_pid"], [b]) is b
            assert b.wait_job(on_b["id"], timeout=10)["status"] == "succeeded"
        finally:
            a.kill()
            b.kill()


def test_result_ttl_deletes_finished_jobs_and_forgets_their_keys(switchyard_bin):
    if pg_helpers.pg_bin_dir() is None:
        pytest.skip("PostgreSQL server binaries not found (Debian package postgresql)")
    with pg_helpers.TempPostgres() as pg:
        a = sy.Server(switchyard_bin, ("--store", "postgres", "--database-url", pg.url, "--result-ttl-s", 1))
        try:
            a.start()
            headers = {"Idempotency-Key": "ttl-key", "Prefer": "wait=10"}
            first = a.submit("noop", {}, headers=headers)
            assert first.status == 200 and first.body["status"] == "succeeded", (first.status, first.body)
            replay = a.submit("noop", {}, headers=headers)
            assert replay.status == 200 and replay.body["id"] == first.body["id"]
            # Deleted once finished longer than the TTL ago (the sweep runs every 5 s).
            sy.wait_until(lambda: a.get(f"/v1/jobs/{first.body['id']}").status == 404, 15,
                          message="the finished job deleted after its TTL")
            assert pg.psql("SELECT count(*) FROM switchyard_jobs") == [["0"]]
            # The key went with its job: the same request is new again, not a replay of nothing.
            again = a.submit("noop", {}, headers=headers)
            assert again.status == 200 and again.body["id"] != first.body["id"], (again.status, again.body)
            # A key that outlived one of its jobs (deleted between the two statements of a sweep):
            # also new again.
            batch_headers = {"Idempotency-Key": "half-gone"}
            items = {"jobs": [{"type": "noop", "input": {}}, {"type": "noop", "input": {}}]}
            made = a.request("POST", "/v1/jobs:batch", items, headers=batch_headers)
            assert made.status == 202, (made.status, made.body)
            pg.psql(f"DELETE FROM switchyard_jobs WHERE id = '{made.body['jobs'][0]['id']}'")
            remade = a.request("POST", "/v1/jobs:batch", items, headers=batch_headers)
            assert remade.status == 202, (remade.status, remade.body)
            assert {j["id"] for j in remade.body["jobs"]}.isdisjoint(j["id"] for j in made.body["jobs"])
        finally:
            a.kill()


def test_sessions_ended_by_the_database_cost_no_request(switchyard_bin):
    """The database ends every session (as a restart or a failover does): idle pooled connections
    are found out when taken, so not one request fails for them."""
    if pg_helpers.pg_bin_dir() is None:
        pytest.skip("PostgreSQL server binaries not found (Debian package postgresql)")
    with pg_helpers.TempPostgres() as pg:
        a = sy.Server(switchyard_bin, ("--store", "postgres", "--database-url", pg.url))
        try:
            a.start()
            for _ in range(3):  # several pooled connections in use and back in the pool
                threads = [threading.Thread(target=lambda: a.submit_ok("noop", {})) for _ in range(8)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE usename = 'switchyard' AND pid <> pg_backend_pid()")
                time.sleep(0.2)  # the terminations reach the idle connections
                statuses = [a.submit("noop", {}, headers={"Prefer": "wait=10"}).status for _ in range(6)]
                assert statuses == [200] * 6, statuses
                assert a.get("/v1/jobs?limit=5").status == 200
        finally:
            a.kill()
