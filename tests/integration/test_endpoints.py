"""Every endpoint of API.md answers with the documented shape; CLI and configuration."""

import json
import socket
import subprocess
import time

import pytest

import sy_helpers as sy

BUILTIN_TYPES = {"sleep": "io", "http.request": "io", "hash": "cpu", "primes": "cpu", "burn": "cpu"}
DIAGNOSTIC_TYPES = {"noop", "alloc", "crash"}
KIND_MODEL = {"io": "thread", "cpu": "process"}


def test_healthz_and_readyz(server):
    assert server.get("/healthz").status == 200
    assert server.get("/readyz").status == 200


def test_openapi_yaml(server):
    r = server.get("/openapi.yaml")
    assert r.status == 200
    assert isinstance(r.body, str) and r.body.startswith("openapi:"), r.body[:200]
    # The contract's paths are documented in the served document.
    for path in ("/v1/jobs", "/v1/jobs:batch", "/v1/jobs/{id}", "/v1/job-types", "/v1/stats"):
        assert path in r.body, f"{path} missing from /openapi.yaml"


def test_submit_returns_202_location_and_job_resource(server):
    before = time.time()
    job = server.submit_ok("sleep", {"ms": 50})
    assert job["type"] == "sleep"
    assert job["model"] == "thread"
    assert job["status"] in ("queued", "running")
    assert job["priority"] == 0
    assert job["timeout_ms"] == 30000  # server default
    assert job["input"] == {"ms": 50}
    assert job["result"] is None
    assert job["finished_at"] is None
    created = sy.parse_ts(job["created_at"]).timestamp()
    assert before - 2 <= created <= time.time() + 2, "created_at is not the current UTC time"

    # GET /v1/jobs/{id} reads the same job
    again = server.job(job["id"])
    assert again["id"] == job["id"] and again["created_at"] == job["created_at"]

    final = server.wait_job(job["id"])
    assert final["status"] == "succeeded", final
    assert final["error"] is None
    assert final["attempts"] == 1
    assert final["worker_pid"] is None
    assert final["result"]["slept_ms"] >= 45, final
    created, started, finished = (sy.parse_ts(final[k]) for k in
                                  ("created_at", "started_at", "finished_at"))
    assert created <= started <= finished
    assert (finished - started).total_seconds() >= 0.045
    for key in ("queue_ms", "run_ms", "cpu_ms"):
        assert isinstance(final[key], (int, float)) and final[key] >= 0, (key, final)
    assert final["run_ms"] >= 45, final


def test_job_ids_unique_and_time_ordered(server):
    ids = []
    for _ in range(6):
        ids.append(server.submit_ok("sleep", {"ms": 1})["id"])
        time.sleep(0.002)  # different milliseconds, so any time-ordered id scheme must sort
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids), f"ids are not time-ordered: {ids}"
    for i in ids:
        server.wait_job(i)


def test_get_unknown_job_is_404(server):
    r = server.get("/v1/jobs/0193f1c2-7a4e-7d3a-9a43-5f0d7e1b2c3d")
    sy.assert_problem(r, 404, "not_found")
    sy.assert_problem(server.get("/v1/jobs/not-a-job-id"), 404, "not_found")


def test_job_types_catalogue_with_diagnostics(server):
    r = server.get("/v1/job-types")
    assert r.status == 200
    assert r.headers.get_content_type() == "application/json"
    types = {t["name"]: t for t in r.body["job_types"]}
    assert set(BUILTIN_TYPES) | DIAGNOSTIC_TYPES <= set(types), sorted(types)
    for name, t in types.items():
        assert t["kind"] in ("io", "cpu"), t
        assert t["default_model"] == KIND_MODEL[t["kind"]], t
        assert isinstance(t["description"], str) and t["description"].strip(), t
        assert isinstance(t["input_schema"], dict) and t["input_schema"], t
    for name, kind in BUILTIN_TYPES.items():
        assert types[name]["kind"] == kind, types[name]


def test_job_types_without_diagnostics(server_factory):
    s = server_factory("--process-workers", "1", diagnostics=False)
    names = {t["name"] for t in s.get("/v1/job-types").body["job_types"]}
    assert set(BUILTIN_TYPES) <= names
    assert not (DIAGNOSTIC_TYPES & names), names
    # diagnostic types cannot be submitted either
    r = s.submit("noop", {})
    body = sy.assert_validation(r, "/type", "unknown_job_type")
    assert body


def test_stats_shape(server):
    r = server.get("/v1/stats")
    assert r.status == 200
    assert r.headers.get_content_type() == "application/json"
    st = r.body
    assert isinstance(st["uptime_s"], (int, float)) and st["uptime_s"] >= 0
    for model in ("thread", "process"):
        m = st["models"][model]
        for key in sy.MODEL_STATS_FIELDS:
            assert isinstance(m[key], (int, float)) and m[key] >= 0, (model, key, m)
    assert st["models"]["process"]["workers"] == 2
    assert st["models"]["thread"]["workers"] >= 1
    time.sleep(1.1)
    assert server.stats()["uptime_s"] > st["uptime_s"], "uptime_s does not advance"


# --- CLI -------------------------------------------------------------------------------------

ALL_FLAGS = ("--listen", "--io-threads", "--process-workers", "--queue-limit",
             "--thread-concurrency", "--default-timeout-ms", "--max-timeout-ms",
             "--max-body-bytes", "--max-wait-s", "--drain-grace-ms", "--retain-jobs",
             "--max-connections", "--diagnostics", "--log-format", "--log-level")


def _run_cli(binary, *args, env=None, timeout=10):
    try:
        return subprocess.run([binary, *args], capture_output=True, timeout=timeout,
                              env=sy.clean_env(env), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"switchyard {' '.join(args)} did not exit within {timeout}s")


def test_help_lists_flags(switchyard_bin):
    p = _run_cli(switchyard_bin, "--help")
    assert p.returncode == 0, p
    out = (p.stdout + p.stderr).decode()
    for flag in ALL_FLAGS:
        assert flag in out, f"{flag} missing from --help"


@pytest.mark.parametrize("args,mention", [
    (("--no-such-flag",), "no-such-flag"),
    (("--io-threads", "abc"), "io-threads"),
    (("--process-workers", "-3"), "process-workers"),
    (("--log-format", "xml"), "log-format"),
    (("--max-body-bytes", "lots"), "max-body-bytes"),
])
def test_bad_cli_exits_nonzero_with_message(switchyard_bin, args, mention):
    p = _run_cli(switchyard_bin, "--listen", "127.0.0.1:0", *args)
    assert p.returncode != 0, f"{args} was accepted"
    out = (p.stdout + p.stderr).decode()
    assert mention in out, f"the error for {args} does not name the option: {out!r}"


def test_bad_env_value_exits_nonzero(switchyard_bin):
    p = _run_cli(switchyard_bin, "--listen", "127.0.0.1:0",
                 env={"SWITCHYARD_IO_THREADS": "abc"})
    assert p.returncode != 0
    assert (p.stdout + p.stderr).decode().strip(), "no message"


def _free_port():
    with socket.socket() as s:
        s.bind((sy.HOST, 0))
        return s.getsockname()[1]


def test_configuration_from_environment(server_factory):
    port = _free_port()
    s = server_factory(env={"SWITCHYARD_LISTEN": f"127.0.0.1:{port}",
                            "SWITCHYARD_PROCESS_WORKERS": "3",
                            "SWITCHYARD_DIAGNOSTICS": "1",
                            "SWITCHYARD_LOG_FORMAT": "text"},
                       listen=None, diagnostics=False, log_format=None)
    assert s.port == port
    s.wait_pool(3)
    names = {t["name"] for t in s.get("/v1/job-types").body["job_types"]}
    assert "noop" in names
    listening = [l for l in s.stderr_lines if f"listening address=127.0.0.1:{port}" in l]
    assert listening, "text log format did not log 'listening address=...'"
    assert not listening[0].lstrip().startswith("{"), "SWITCHYARD_LOG_FORMAT=text ignored"


def test_flag_wins_over_environment_and_json_logs(server_factory):
    s = server_factory("--process-workers", "1",
                       env={"SWITCHYARD_PROCESS_WORKERS": "3", "SWITCHYARD_LOG_FORMAT": "text"})
    s.wait_pool(1)
    time.sleep(0.3)
    assert s.stats()["models"]["process"]["workers"] == 1
    # generate some log traffic, then stop and check every line is a JSON object
    s.wait_job(s.submit_ok("sleep", {"ms": 1})["id"])
    assert s.get("/nope").status == 404
    assert s.stop() == 0
    lines = [l for l in s.stderr_lines if l.strip()]
    assert lines
    for line in lines:
        obj = json.loads(line)
        assert isinstance(obj, dict) and "msg" in obj, line
