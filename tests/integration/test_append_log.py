"""The diagnostic job type append_log on the real server: the lines it appends on both models, what
a cancel leaves in the file, and the inputs it refuses.

append_log writes `start <tag> <pid> <ns>` when it begins and `end <tag> <pid> <ns>` when it ends
(`stop` instead when a thread-model run is told to stop), with ns read from CLOCK_MONOTONIC: the
replica tests read such a file to prove that no job ever ran twice at once.
"""
import time

import pytest

import sy_helpers as sy

WAIT = {"Prefer": "wait=30"}


@pytest.fixture(scope="module")
def als(module_server_factory):
    return module_server_factory("--store", "memory", "--process-workers", "2")


@pytest.fixture(autouse=True)
def _idle(als):
    als.wait_idle()
    als.wait_pool(2)
    yield


@pytest.mark.parametrize("model", ["process", "thread"])
def test_a_run_appends_start_and_end(als, tmp_path, model):
    log = str(tmp_path / "jobs.log")
    before = time.monotonic_ns()
    r = als.submit("append_log", {"path": log, "tag": f"one-{model}", "ms": 50}, headers=WAIT, model=model)
    assert r.status == 200, (r.status, r.body)
    job = sy.assert_job_resource(r.body)
    assert job["status"] == "succeeded" and job["model"] == model, job
    result = job["result"]
    pid = job["worker_pid"] if model == "process" else als.pid
    assert result["pid"] == pid, (result, job)
    assert before <= result["started_ns"] and result["ended_ns"] - result["started_ns"] >= 50_000_000, result
    assert result["ended_ns"] <= time.monotonic_ns(), "the job's clock is not CLOCK_MONOTONIC"
    assert sy.read_log(log) == [("start", f"one-{model}", pid, result["started_ns"]),
                                ("end", f"one-{model}", pid, result["ended_ns"])]


def test_concurrent_runs_leave_whole_lines(als, tmp_path):
    """80 runs on both models append to one file at once: every line is whole, and each tag has one
    start then one end."""
    log = str(tmp_path / "shared.log")
    jobs = [{"type": "append_log", "model": ("process", "thread")[i % 2],
             "input": {"path": log, "tag": f"t{i}", "ms": i % 7}} for i in range(80)]
    r = als.request("POST", "/v1/jobs:batch", {"jobs": jobs})
    assert r.status == 202, (r.status, r.body)
    for job in r.body["jobs"]:
        assert als.wait_job(job["id"])["status"] == "succeeded"
    by_tag = {}
    for event, tag, _, ns in sy.read_log(log):
        by_tag.setdefault(tag, []).append((event, ns))
    assert sorted(by_tag) == sorted(f"t{i}" for i in range(80))
    for tag, events in by_tag.items():
        assert [e for e, _ in events] == ["start", "end"], (tag, events)
        assert events[0][1] <= events[1][1], (tag, events)


def test_cancel_on_a_thread_writes_stop(als, tmp_path):
    log = str(tmp_path / "jobs.log")
    job = als.submit_ok("append_log", {"path": log, "tag": "long", "ms": 600_000}, model="thread")
    als.wait_status(job["id"], "running")
    sy.wait_until(lambda: len(sy.read_log(log, in_progress=True)) == 1, 5, message="the start line")
    r = als.request("DELETE", f"/v1/jobs/{job['id']}")
    assert r.status == 200 and r.headers.get("Switchyard-Cancellation") == "requested", (r.status, r.body)
    final = als.wait_job(job["id"])
    assert final["status"] == "cancelled", final
    (start, stop) = sy.read_log(log)
    assert start[:3] == ("start", "long", als.pid) and stop[:3] == ("stop", "long", als.pid), (start, stop)
    assert start[3] < stop[3]


def test_cancel_in_a_worker_kills_it_before_any_end(als, tmp_path):
    """On the process model a cancel is SIGKILL: the file keeps a start with neither end nor stop."""
    log = str(tmp_path / "jobs.log")
    job = als.submit_ok("append_log", {"path": log, "tag": "doomed", "ms": 600_000})
    running = als.wait_status(job["id"], "running")
    assert running["model"] == "process"
    sy.wait_until(lambda: len(sy.read_log(log, in_progress=True)) == 1, 5, message="the start line")
    r = als.request("DELETE", f"/v1/jobs/{job['id']}")
    assert r.status == 200 and r.headers.get("Switchyard-Cancellation") == "killed", (r.status, r.body)
    assert als.wait_job(job["id"])["status"] == "cancelled"
    time.sleep(0.1)  # an end or stop line written after all would have landed by now
    (only,) = sy.read_log(log)
    assert only[:3] == ("start", "doomed", running["worker_pid"]), only


def test_a_file_it_cannot_open_fails_the_job(als, tmp_path):
    missing = str(tmp_path / "no-such-dir" / "jobs.log")
    r = als.submit("append_log", {"path": missing, "tag": "t", "ms": 0}, headers=WAIT)
    assert r.status == 200, (r.status, r.body)
    assert r.body["status"] == "failed", r.body
    assert r.body["error"] == {"code": "handler_error", "message": f"open {missing}: No such file or directory"}


@pytest.mark.parametrize("input_, path", [
    ({"path": "relative/jobs.log", "tag": "t", "ms": 1}, "/input/path"),
    ({"path": "/tmp/x\u0000y", "tag": "t", "ms": 1}, "/input/path"),
    ({"path": "/tmp/" + "p" * 4096, "tag": "t", "ms": 1}, "/input/path"),
    ({"path": "/tmp/jobs.log", "ms": 1}, "/input/tag"),
    ({"path": "/tmp/jobs.log", "tag": "two words", "ms": 1}, "/input/tag"),
    ({"path": "/tmp/jobs.log", "tag": "line\nbreak", "ms": 1}, "/input/tag"),
    ({"path": "/tmp/jobs.log", "tag": "", "ms": 1}, "/input/tag"),
    ({"path": "/tmp/jobs.log", "tag": "t" * 201, "ms": 1}, "/input/tag"),
    ({"path": "/tmp/jobs.log", "tag": "t", "ms": 600_001}, "/input/ms"),
    ({"path": "/tmp/jobs.log", "tag": "t"}, "/input/ms"),
])
def test_bad_input_is_refused_before_it_runs(als, input_, path):
    before = als.submitted_total()
    sy.assert_validation(als.submit("append_log", input_), path, "validation_failed")
    assert als.submitted_total() == before
