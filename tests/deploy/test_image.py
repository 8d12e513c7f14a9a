"""The Switchyard image, built from the project's Dockerfile with podman and run for real.

scripts/build-image.sh builds the image (making the debian:bookworm-slim base from Debian's
mirror only when it is missing, as CONTAINERS.md explains). The container publishes its port on
127.0.0.1 only; every wait is bounded.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
import sy_helpers as sy  # noqa: E402

REPO = sy.REPO_ROOT
TAG = "localhost/switchyard:test"
CONF = os.path.join(REPO, "build", "podman", "containers.conf")
TERMINAL = sy.TERMINAL


def podman(*args, check=True, timeout=120, capture=True):
    env = dict(os.environ, CONTAINERS_CONF=CONF)
    proc = subprocess.run(["podman", *args], env=env, timeout=timeout, text=True,
                          stdout=subprocess.PIPE if capture else None,
                          stderr=subprocess.PIPE if capture else None)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {proc.returncode}:\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def free_port():
    with socket.socket() as s:
        s.bind((sy.HOST, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def image():
    proc = subprocess.run([os.path.join(REPO, "scripts", "build-image.sh"), TAG], cwd=REPO,
                          timeout=2400, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise AssertionError(f"build-image.sh failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    print(proc.stdout.splitlines()[-1])
    return TAG


class Container:
    def __init__(self, image, *env_pairs):
        self.name = f"switchyard-test-{os.getpid()}-{time.monotonic_ns() % 100000}"
        self.port = free_port()
        args = ["run", "-d", "--name", self.name, "-p", f"127.0.0.1:{self.port}:8080"]
        for pair in env_pairs:
            args += ["-e", pair]
        podman(*args, image)

    def http(self, method, path, body=None, **kw):
        return sy.http_request(self.port, method, path, body, **kw)

    def wait_ready(self, timeout=60):
        def ready():
            try:
                return self.http("GET", "/readyz", timeout=2).status == 200
            except OSError:
                return False
        sy.wait_until(ready, timeout, interval=0.2, message=f"{self.name} /readyz")

    def inspect(self, fmt):
        return podman("inspect", "--format", fmt, self.name).stdout.strip()

    def logs(self):
        p = podman("logs", self.name, check=False)
        return p.stdout + p.stderr

    def remove(self):
        podman("rm", "-f", "-v", "-t", "0", self.name, check=False)  # -v: its anonymous volume too


@pytest.fixture(scope="module")
def container(image):
    c = Container(image, "SWITCHYARD_PROCESS_WORKERS=2", "SWITCHYARD_LOG_FORMAT=json")
    try:
        c.wait_ready()
        yield c
    finally:
        c.remove()


def test_image_metadata(image):
    info = json.loads(podman("image", "inspect", image).stdout)[0]
    cfg = info["Config"]
    assert cfg["User"].split(":")[0] in ("10001", "switchyard")
    assert "8080/tcp" in cfg["ExposedPorts"]
    assert cfg["StopSignal"] in ("SIGTERM", "15")
    assert "SWITCHYARD_LISTEN=0.0.0.0:8080" in cfg["Env"]
    assert cfg["Entrypoint"][0] == "/usr/bin/tini"
    health = info.get("Healthcheck") or cfg.get("Healthcheck") or {}
    assert health.get("Test", [])[:3] == ["CMD", "/usr/local/bin/switchyard", "healthcheck"], health


def test_runtime_stage_has_no_compiler_and_small(image):
    out = podman("run", "--rm", "--entrypoint", "/bin/sh", image, "-c",
                 "for c in gcc g++ cc c++ cmake ld as; do command -v $c; done; "
                 "ls /usr/include 2>/dev/null | wc -l; id -u", check=False).stdout.split()
    assert out[-1] == "10001", out
    assert out[:-2] == [], f"build tools in the runtime image: {out[:-2]}"
    assert int(out[-2]) < 50, "headers in the runtime image"
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout)
    base = int(podman("image", "inspect", "--format", "{{.Size}}",
                      "docker.io/library/debian:bookworm-slim").stdout)
    print(f"image size {size / 1e6:.1f} MB, of which {(size - base) / 1e6:.1f} MB on top of the base")
    assert size - base < 60e6, f"runtime layers are {(size - base) / 1e6:.1f} MB"


def test_version_and_healthcheck_inside(container):
    out = podman("exec", container.name, "switchyard", "--version").stdout
    assert "switchyard" in out.lower()
    assert podman("healthcheck", "run", container.name, check=False).returncode == 0
    assert container.inspect("{{.Config.User}}").split(":")[0] in ("10001", "switchyard")


def test_jobs_on_both_models(container):
    r = container.http("POST", "/v1/jobs", {"type": "sleep", "input": {"ms": 50}},
                       headers={"Prefer": "wait=10"})
    assert r.status == 200, r
    assert r.body["status"] == "succeeded" and r.body["model"] == "thread", r.body
    assert r.body["result"]["slept_ms"] >= 50

    data = "switchyard in a container"
    r = container.http("POST", "/v1/jobs", {"type": "hash", "input": {"data": data}},
                       headers={"Prefer": "wait=10"})
    assert r.status == 200, r
    assert r.body["status"] == "succeeded" and r.body["model"] == "process", r.body
    assert r.body["result"]["hex"] == hashlib.sha256(data.encode()).hexdigest()
    # The worker is a separate process inside the container (the server is tini's child).
    assert r.body["worker_pid"] > 1

    r = container.http("GET", f"/v1/jobs/{r.body['id']}")
    assert r.status == 200 and r.body["status"] == "succeeded"


def test_metrics_and_openapi(container):
    r = container.http("GET", "/metrics")
    assert r.status == 200
    samples, _ = sy.parse_metrics(r.body)
    for model in ("thread", "process"):
        done = sy.metric_sum(samples, "switchyard_jobs_completed_total", model=model,
                             status="succeeded")
        assert done is not None and done >= 1, f"no completed {model} job in /metrics"
    assert sy.metric_sum(samples, "process_resident_memory_bytes") > 0
    r = container.http("GET", "/openapi.yaml")
    assert r.status == 200 and "openapi:" in r.body


def test_stop_drains_promptly_with_exit_0(image):
    c = Container(image, "SWITCHYARD_PROCESS_WORKERS=2", "SWITCHYARD_LOG_FORMAT=json",
                  "SWITCHYARD_DRAIN_GRACE_MS=20000")
    try:
        c.wait_ready()
        # Jobs in flight on both models, each awaited by a client, when the stop comes.
        jobs = [{"type": "sleep", "input": {"ms": 1500}}] * 6 + \
               [{"type": "burn", "input": {"ms": 800}}] * 2 + \
               [{"type": "burn", "input": {"ms": 300}}] * 4  # two of these wait in the queue
        outcomes = []

        def await_job(job):
            try:
                r = c.http("POST", "/v1/jobs", job, headers={"Prefer": "wait=30"}, timeout=40)
                outcomes.append((r.status, r.body.get("status") if isinstance(r.body, dict) else r.body))
            except OSError as e:  # noqa: PERF203
                outcomes.append(("error", repr(e)))

        threads = [threading.Thread(target=await_job, args=(j,)) for j in jobs]
        for t in threads:
            t.start()
        sy.wait_until(lambda: c.http("GET", "/v1/stats").body["models"]["thread"]["running"] >= 6,
                      10, message="sleep jobs running")
        started = time.monotonic()
        podman("stop", "-t", "30", c.name, timeout=60)
        took = time.monotonic() - started
        for t in threads:
            t.join(timeout=30)
        assert took < 6, f"podman stop took {took:.1f} s"
        assert c.inspect("{{.State.ExitCode}}") == "0"
        assert len(outcomes) == len(jobs)
        for status, job_status in outcomes:
            assert status in (200, 202, 503), (status, job_status)
            if status == 200:
                assert job_status in TERMINAL, outcomes
        logs = [json.loads(line) for line in c.logs().splitlines() if line.startswith("{")]
        drained = [e for e in logs if e.get("msg") == "drained"]
        assert drained, c.logs()[-3000:]
        assert drained[-1]["jobs_not_terminal"] == 0, drained[-1]
        assert drained[-1]["jobs_accepted"] >= 6
        assert drained[-1]["workers_left"] == 0
    finally:
        c.remove()


def test_compose_file_runs_the_service(image):
    """deploy/docker-compose.yml brought up with podman-compose: the switchyard service as written
    (read-only root, tmpfs, no capabilities, healthcheck, named volume). Its prometheus and
    grafana services need images from Docker Hub, which this machine cannot reach; the same
    prometheus.yml and rules run against the service in test_prometheus.py instead."""
    podman("tag", image, "localhost/switchyard:latest")
    port = free_port()
    project = f"sytest{os.getpid()}"
    env = dict(os.environ, CONTAINERS_CONF=CONF, PUBLISH=f"127.0.0.1:{port}")
    compose = ["podman-compose", "-f", os.path.join(REPO, "deploy", "docker-compose.yml"), "-p", project]

    def run(*args, timeout=120):
        return subprocess.run(compose + list(args), env=env, timeout=timeout, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        up = run("up", "-d", "--no-build", "--no-deps", "switchyard")
        assert up.returncode == 0, up.stdout
        name = f"{project}_switchyard_1"

        def ready():
            try:
                return sy.http_request(port, "GET", "/readyz", timeout=2).status == 200
            except OSError:
                return False
        sy.wait_until(ready, 60, interval=0.2, message="compose service /readyz")
        for job in ({"type": "sleep", "input": {"ms": 10}}, {"type": "primes", "input": {"n": 100}}):
            r = sy.http_request(port, "POST", "/v1/jobs", job, headers={"Prefer": "wait=10"})
            assert r.status == 200 and r.body["status"] == "succeeded", r
        # The hardening of the compose file is really applied.
        probe = podman("exec", name, "/bin/sh", "-c",
                       "touch /usr/x 2>/dev/null && echo writable || echo read-only; "
                       "touch /tmp/x && echo tmp-ok; id -u; grep CapEff /proc/self/status",
                       check=False).stdout.split()
        assert probe[:3] == ["read-only", "tmp-ok", "10001"], probe
        assert probe[-1] == "0000000000000000", probe
        env_vars = podman("exec", name, "/bin/sh", "-c", "env").stdout
        assert "SWITCHYARD_DRAIN_GRACE_MS=30000" in env_vars
        stop = run("stop", "-t", "40", "switchyard")
        assert stop.returncode == 0, stop.stdout
        assert podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"
    finally:
        run("down", "-v", "-t", "0")
