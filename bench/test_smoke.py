"""Smoke test of the benchmark tools (ctest: bench_smoke, with SWITCHYARD_BENCH on).

Checks what the tools count, never how fast anything is: every mode of the load generator
reads every job to its end and reports the right counts, a job that does not succeed is
counted and turns the exit status to 1, and the bare-fork ceiling burns the CPU it is asked to.
SWITCHYARD_BENCH_BUILD names the build directory (default: build/bench).
"""

import os

import pytest

import harness

BUILD = os.environ.get("SWITCHYARD_BENCH_BUILD") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "build", "bench")
TOOLS = harness.Tools(BUILD)


@pytest.fixture(scope="module")
def server():
    with harness.Switchyard(TOOLS.switchyard, ("--retain-jobs", "10000")) as sy:
        yield sy
    harness.stop_all()


def assert_all_succeeded(report, n):
    assert report["ok"] is True, report
    assert report["jobs"]["started"] == n, report
    assert report["jobs"]["by_status"] == {"succeeded": n}, report
    assert report["latency_ms"]["end_to_end"]["count"] == n, report


@pytest.mark.parametrize("model", ["thread", "process"])
def test_prefer_wait(server, model):
    report = TOOLS.loadgen(server.port, "--type", "noop", "--model", model, "-n", 200, "-c", 8,
                           "--prefer-wait", 10, deadline=60)
    assert_all_succeeded(report, 200)
    assert report["http"]["by_code"] == {"200": 200}, report  # each a complete job call


def test_submit_then_long_poll(server):
    report = TOOLS.loadgen(server.port, "--type", "sleep", "--input", '{"ms":20}', "-n", 100, "-c", 4,
                           deadline=60)
    assert_all_succeeded(report, 100)
    assert report["http"]["by_code"]["202"] == 100, report  # one submission each, then reads


def test_batch_submit_first(server):
    report = TOOLS.loadgen(server.port, "--type", "sleep", "--input", '{"ms":50}', "-n", 250, "--batch", 100,
                           "-c", 3, "--submit-first", deadline=60)
    assert_all_succeeded(report, 250)
    assert report["latency_ms"]["submit"]["count"] == 3, report  # 100 + 100 + 50
    assert report["submit_phase_s"] <= report["elapsed_s"], report
    assert report["server_span_s"] is not None and report["server_span_s"] >= 0.05, report


def test_read_last_first_reads_every_job(server):
    report = TOOLS.loadgen(server.port, "--type", "burn", "--input", '{"ms":2}', "-n", 150, "--batch", 100,
                           "-c", 1, "--submit-first", "--read-last-first", "--poll-wait", 10, deadline=60)
    assert_all_succeeded(report, 150)
    assert report["job"]["read_last_first"] is True, report
    assert report["http"]["by_code"] == {"202": 2, "200": 150}, report  # 2 batches, then one read per job


def test_read_last_first_needs_submit_first():
    with pytest.raises(RuntimeError, match="submit-first"):
        TOOLS.loadgen(1, "--type", "noop", "-n", 1, "--read-last-first", deadline=10)


def test_jobs_that_fail_are_counted(server):
    # burn 500 ms with a 50 ms timeout: every job ends timed_out, and the report says so.
    report = TOOLS.loadgen(server.port, "--type", "burn", "--input", '{"ms":500}', "--timeout-ms", 50, "-n", 6,
                           "-c", 2, "--prefer-wait", 10, deadline=60)
    assert report["ok"] is False, report
    assert report["jobs"]["by_status"] == {"timed_out": 6}, report
    assert report["jobs"]["not_succeeded"] == 6, report


def test_refused_submissions_are_counted(server):
    report = TOOLS.loadgen(server.port, "--type", "no_such_type", "-n", 5, "-c", 1, deadline=30)
    assert report["ok"] is False, report
    assert report["jobs"]["by_status"] == {"not_admitted": 5}, report
    assert report["http"]["by_code"] == {"422": 5}, report


def test_plain_mode(server):
    report = TOOLS.loadgen(server.port, "--plain", "GET", "--path", "/healthz", "-n", 300, "-c", 4, deadline=30)
    assert report["ok"] is True, report
    assert report["http"]["by_code"] == {"200": 300}, report
    assert report["latency_ms"]["request"]["count"] == 300, report


def test_several_ports_share_the_connections(server):
    # Two servers (replicas stand-ins): 4 connections go 2 and 2, each job read where it was sent.
    with harness.Switchyard(TOOLS.switchyard, ("--retain-jobs", "10000")) as other:
        before = [s.stats()["models"]["thread"]["submitted"] for s in (server, other)]
        report = TOOLS.loadgen([server.port, other.port], "--type", "noop", "--model", "thread", "-n", 200,
                               "-c", 4, "--prefer-wait", 10, deadline=60)
        got = [s.stats()["models"]["thread"]["submitted"] - b for s, b in zip((server, other), before)]
    assert_all_succeeded(report, 200)
    assert report["ports"] == [server.port, other.port], report
    assert sum(got) == 200 and min(got) > 0, got


@pytest.mark.parametrize("mode", ["static", "pipe"])
def test_bare_fork_burns_what_it_is_asked(mode):
    report = TOOLS.bare_fork("--procs", 2, "--jobs", 20, "--ms", 5, "--mode", mode)
    assert report["jobs"] == 20 and report["procs"] == 2, report
    assert report["cpu_s"] >= 20 * 0.005 * 0.95, report  # the children's CPU, as getrusage saw it
