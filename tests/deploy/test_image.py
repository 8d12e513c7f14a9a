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
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
import sy_helpers as sy  # noqa: E402

try:
    import yaml
except ImportError:  # pragma: no cover - reported by the test that needs it
    yaml = None

REPO = sy.REPO_ROOT
TAG = "localhost/switchyard:test"
CONF = os.path.join(REPO, "build", "podman", "containers.conf")
TERMINAL = sy.TERMINAL
COMPOSE_PG = os.path.join(REPO, "deploy", "compose-postgres.yml")


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


def http_inside(container, method, path, body=None, headers=None):
    """One request from inside `container` to its own 127.0.0.1:8080, with bash's /dev/tcp (the
    images have no HTTP client): what that replica itself answers, whatever the load balancer
    does. Returns an sy.Response; the body is decoded JSON when it is JSON."""
    data = json.dumps(body) if body is not None else ""
    head = [f"{method} {path} HTTP/1.1", "Host: localhost", "Connection: close",
            f"Content-Length: {len(data.encode())}"]
    head += ["Content-Type: application/json"] if body is not None else []
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    script = 'exec 3<>/dev/tcp/127.0.0.1/8080 && printf "%s" "$1" >&3 && cat <&3'
    out = podman("exec", container, "bash", "-c", script, "_",
                 "\r\n".join(head) + "\r\n\r\n" + data, timeout=30).stdout
    # podman() reads text, so CRLF arrives as "\n" (universal newlines).
    head_text, _, payload = out.partition("\n\n")
    lines = head_text.split("\n")
    status = int(lines[0].split()[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert "chunked" not in fields.get("transfer-encoding", ""), "chunked responses are not decoded here"
    try:
        decoded = json.loads(payload)
    except ValueError:
        decoded = payload
    return sy.Response(status, fields, decoded)


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


def build_side_images(services, skip):
    """Builds the images of the compose services that have a build context of their own under
    deploy/ (PostgreSQL and HAProxy from Debian's packages), as `up --build` would; the layer
    cache makes a repeat take seconds. Returns {service: seconds}."""
    took = {}
    for name, svc in services.items():
        if name in skip:
            continue
        context = os.path.join(REPO, "deploy", svc["build"]["context"])
        started = time.monotonic()
        proc = subprocess.run(["nice", "-n", "10", "podman", "build", "--pull=never", "--layers",
                               "--format", "docker", "-t", f"localhost/{svc['image']}", context],
                              env=dict(os.environ, CONTAINERS_CONF=CONF), timeout=900, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.returncode == 0, f"building {name} from {context}:\n{proc.stdout[-4000:]}"
        took[name] = round(time.monotonic() - started, 1)
    return took


class ReplicaView:
    """A replica seen from inside its own container, for sy.list_all."""

    def __init__(self, container):
        self.container = container

    def get(self, path, **_):
        return http_inside(self.container, "GET", path)


class PgStack:
    """deploy/compose-postgres.yml under podman-compose, as a project of its own: the load
    balancer's port on 127.0.0.1 only, a database password of its own."""

    def __init__(self, services):
        self.services = services
        self.replicas = sorted(name for name in services if name.startswith("switchyard-"))
        self.port = free_port()
        self.project = f"sypg{os.getpid()}"
        self.names = {s: f"{self.project}_{s}_1" for s in services}  # podman-compose 1.0's names
        password = f"pw-{os.getpid()}-{time.monotonic_ns() % 1000000}"
        self.env = dict(os.environ, CONTAINERS_CONF=CONF, PUBLISH=f"127.0.0.1:{self.port}",
                        SWITCHYARD_DB_PASSWORD=password)

    def compose(self, *args, timeout=180):
        return subprocess.run(["podman-compose", "-f", COMPOSE_PG, "-p", self.project, *args],
                              env=self.env, timeout=timeout, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def lb(self, method, path, body=None, **kw):
        """A request through the one published port."""
        return sy.http_request(self.port, method, path, body, **kw)

    def lb_ready(self):
        try:
            return self.lb("GET", "/readyz", timeout=3).status == 200
        except OSError:
            return False

    def replica_ready(self, service):
        return podman("exec", self.names[service], "switchyard", "healthcheck", "--url",
                      "http://127.0.0.1:8080/readyz", check=False, timeout=30).returncode == 0

    def lb_log(self):
        p = podman("logs", self.names["lb"], check=False)
        return p.stdout + p.stderr

    def print_logs(self):
        for service, name in self.names.items():
            p = podman("logs", "--tail", "25", name, check=False)
            print(f"--- {service} ---\n{p.stdout}{p.stderr}")

    def down(self):
        self.compose("down", "-v", "-t", "0")
        podman("network", "rm", "-f", f"{self.project}_default", check=False)  # podman-compose 1.0 leaves it


def check_hardening(stack):
    """Read-only root, no capabilities, no-new-privileges, not root; every health check as
    written passes; only the load balancer publishes a port, on loopback."""
    uids = {}
    for service in ("postgres", "lb", "switchyard-1"):
        probe = podman("exec", stack.names[service], "/bin/sh", "-c",
                       "touch /usr/x 2>/dev/null && echo writable || echo read-only; id -u; "
                       "grep -E '^(CapEff|NoNewPrivs):' /proc/self/status", check=False).stdout.split()
        assert probe[0] == "read-only" and probe[2:] == ["CapEff:", "0000000000000000", "NoNewPrivs:", "1"], \
            (service, probe)
        uids[service] = probe[1]
    assert uids["switchyard-1"] == "10001" and "0" not in uids.values(), uids
    for service, name in stack.names.items():
        assert podman("healthcheck", "run", name, check=False).returncode == 0, f"{service} health check"
    published = podman("port", stack.names["lb"]).stdout.split()
    assert published == ["8080/tcp", "->", f"127.0.0.1:{stack.port}"], published
    assert all(not podman("port", stack.names[s]).stdout.strip() for s in stack.services if s != "lb")


def check_jobs_through_one_port(stack):
    """30 jobs with Idempotency-Keys through the port, a long-poll on each: all succeed, all three
    replicas ran some (their own /metrics), each lists all 30 (asked from inside its container).
    Returns the ids."""
    job = {"type": "sleep", "model": "process", "input": {"ms": 200}}
    keys = [f"{stack.project}-{i}" for i in range(30)]
    with ThreadPoolExecutor(10) as pool:
        submitted = list(pool.map(
            lambda key: stack.lb("POST", "/v1/jobs", job, headers={"Idempotency-Key": key}), keys))
    assert all(r.status == 202 for r in submitted), [(r.status, r.body) for r in submitted if r.status != 202]
    ids = [r.body["id"] for r in submitted]
    assert len(set(ids)) == 30
    again = stack.lb("POST", "/v1/jobs", job, headers={"Idempotency-Key": keys[0]})
    assert again.status in (200, 202) and again.body["id"] == ids[0], (again.status, again.body)
    sy.assert_problem(stack.lb("POST", "/v1/jobs", {**job, "input": {"ms": 201}},
                               headers={"Idempotency-Key": keys[0]}), 409, "conflict")
    with ThreadPoolExecutor(10) as pool:
        finals = list(pool.map(lambda i: stack.lb("GET", f"/v1/jobs/{i}?wait=30", timeout=40), ids))
    assert all(r.status == 200 and r.body["status"] == "succeeded" and r.body["result"]["slept_ms"] >= 200
               for r in finals), [(r.status, r.body) for r in finals]
    r = stack.lb("POST", "/v1/jobs", {"type": "sleep", "input": {"ms": 50}}, headers={"Prefer": "wait=30"},
                 timeout=40)
    assert r.status == 200 and r.body["status"] == "succeeded", (r.status, r.body)
    assert r.headers.get("Preference-Applied") == "wait=30", dict(r.headers)

    ran = {}
    for service in stack.replicas:
        name = stack.names[service]
        listed = sy.list_all(ReplicaView(name), type="sleep")
        assert all(listed.get(i, {}).get("status") == "succeeded" for i in ids), \
            f"{service} does not list every job as succeeded"
        samples, _ = sy.parse_metrics(http_inside(name, "GET", "/metrics").body)
        ran[service] = int(sy.metric_sum(samples, "switchyard_jobs_completed_total", model="process",
                                         type="sleep", status="succeeded") or 0)
    print(f"30 jobs through one port ran on: {ran}")
    assert sum(ran.values()) == 30, ran
    # Two workers each: no replica can hold the queue to itself, so all three take part.
    assert all(n > 0 for n in ran.values()), f"a replica ran none of the jobs: {ran}"
    return ids


def check_replica_killed(stack, victim):
    """SIGKILL of `victim` while each replica runs two 4 s jobs (two workers each): calls through
    the port keep succeeding, HAProxy takes it out, its two jobs run again elsewhere once its
    lease lapses (attempt 2), the other four end on attempt 1; started again, it rejoins.
    Returns the six jobs' ids."""
    long_job = {"type": "sleep", "model": "process", "max_attempts": 2, "input": {"ms": 4000}}
    r = stack.lb("POST", "/v1/jobs:batch", {"jobs": [long_job] * 6})
    assert r.status == 202, (r.status, r.body)
    long_ids = [j["id"] for j in r.body["jobs"]]
    sy.wait_until(lambda: all(stack.lb("GET", f"/v1/jobs/{i}").body["status"] == "running" for i in long_ids),
                  15, interval=0.2, message="the six long jobs running")
    assert http_inside(stack.names[victim], "GET", "/v1/stats").body["models"]["process"]["running"] == 2
    killed_at = time.time()
    podman("kill", "-s", "KILL", stack.names[victim])
    # At once: calls still succeed (the thread model: the survivors' workers are busy). One sent
    # to the dead replica before the checks take it out waits out HAProxy's connect timeout (1 s)
    # and goes to another.
    latencies = []
    for _ in range(9):
        t0 = time.monotonic()
        r = stack.lb("POST", "/v1/jobs", {"type": "sleep", "input": {"ms": 50}},
                     headers={"Prefer": "wait=30"}, timeout=40)
        latencies.append(round(time.monotonic() - t0, 2))
        assert r.status == 200 and r.body["status"] == "succeeded", (r.status, r.body)
    down = f"replicas/{victim} is DOWN"
    sy.wait_until(lambda: down in stack.lb_log(), 10, message="HAProxy takes it out")

    def long_jobs_final():
        jobs = [stack.lb("GET", f"/v1/jobs/{i}?wait=5", timeout=15).body for i in long_ids]
        return all(j["status"] in TERMINAL for j in jobs) and jobs
    finals = sy.wait_until(long_jobs_final, 60, interval=0.2, message="the six long jobs terminal")
    assert all(j["status"] == "succeeded" for j in finals), finals
    assert Counter(j["attempts"] for j in finals) == Counter({1: 4, 2: 2}), finals
    rerun_after = sorted(round(sy.parse_ts(j["started_at"]).timestamp() - killed_at, 1)
                         for j in finals if j["attempts"] == 2)
    print(f"after the kill: calls through the port took {latencies} s; the victim's two jobs "
          f"started again {rerun_after} s after it (lease 15 s)")

    podman("start", stack.names[victim])
    sy.wait_until(lambda: stack.replica_ready(victim), 60, interval=0.5, message=f"{victim} back")
    sy.wait_until(lambda: f"replicas/{victim} is UP" in stack.lb_log().split(down)[-1], 15,
                  message="HAProxy takes it back")
    return long_ids


def check_database_restart(stack, ids):
    """PostgreSQL stops within seconds on SIGTERM although the replicas hold connections, exit 0;
    the port reports not ready meanwhile, and serves again, every job still there, once it is back.
    Returns how long the stop took."""
    t0 = time.monotonic()
    podman("stop", "-t", "30", stack.names["postgres"], timeout=60)
    took = time.monotonic() - t0
    assert took < 10, f"podman stop of postgres took {took:.1f} s"
    assert podman("inspect", "--format", "{{.State.ExitCode}}", stack.names["postgres"]).stdout.strip() == "0"
    # Every replica, not just the one the port happens to reach: they notice the outage at their
    # own moments (a request, a lease renewal), and one still answering ready from before would
    # make the port look ready again before the database is back.
    sy.wait_until(lambda: not any(stack.replica_ready(name) for name in stack.replicas), 30, interval=0.5,
                  message="every replica's /readyz not ready without the database")
    assert not stack.lb_ready(), "the port answers ready while no replica is"
    podman("start", stack.names["postgres"])
    sy.wait_until(lambda: all(stack.replica_ready(name) for name in stack.replicas), 60, interval=0.5,
                  message="every replica's /readyz ready again with the database back")
    sy.wait_until(stack.lb_ready, 30, interval=0.5, message="the port's /readyz ready again")
    # Pooled connections that the restart broke are dropped when taken, so once /readyz is 200
    # no request fails for them. (Retried here only so that a failure shows what came back.)
    unavailable = []

    def lb_retrying(method, path, body=None, **kw):
        for _ in range(20):
            r = stack.lb(method, path, body, **kw)
            if r.status != 503:
                return r
            unavailable.append(r.body.get("code") if isinstance(r.body, dict) else r.body)
            time.sleep(0.25)
        return r
    for _ in range(6):
        r = lb_retrying("POST", "/v1/jobs", {"type": "sleep", "input": {"ms": 50}},
                        headers={"Prefer": "wait=30"}, timeout=40)
        assert r.status == 200 and r.body["status"] == "succeeded", (r.status, r.body)
    r = lb_retrying("GET", "/v1/jobs?" + urllib.parse.urlencode({"type": "sleep", "limit": 1000}))
    assert r.status == 200, (r.status, r.body)
    assert set(ids) <= {j["id"] for j in r.body["jobs"]}, "jobs lost across the restart"
    assert not unavailable, f"503 after the database was back: {unavailable}"
    print(f"after the database restart: {len(unavailable)} answers 503 {sorted(set(unavailable))} "
          f"before the calls succeeded")
    return took


def test_compose_postgres_runs_three_replicas_behind_one_port(image):
    """deploy/compose-postgres.yml brought up with podman-compose: PostgreSQL and HAProxy built from
    deploy/postgres and deploy/lb, three replicas of the image, one published port (on loopback
    here), and a database password of the test's own. Through that one port: 30 jobs succeed and
    ran on all three replicas, every replica lists all of them (one queue), an Idempotency-Key
    holds whichever replica answers. A replica killed with SIGKILL while it runs two jobs is taken
    out by the load balancer (later requests still succeed) and its two jobs run again elsewhere
    once its lease lapses (attempt 2); it rejoins when started again. PostgreSQL stops within
    seconds on SIGTERM with the replicas connected; meanwhile the port answers not ready, and it
    serves again once the database is back."""
    if yaml is None:
        pytest.fail("PyYAML is required (Debian package python3-yaml)")
    t_start = time.monotonic()
    with open(COMPOSE_PG, encoding="utf-8") as f:
        services = yaml.safe_load(f)["services"]
    stack = PgStack(services)
    assert stack.replicas == ["switchyard-1", "switchyard-2", "switchyard-3"], sorted(services)
    for name in stack.replicas:  # the image the fixture built, from the same Dockerfile
        build = services[name]["build"]
        assert services[name]["image"] == "switchyard:latest"
        assert os.path.samefile(os.path.join(REPO, "deploy", build["context"], build["dockerfile"]),
                                os.path.join(REPO, "Dockerfile"))
    podman("tag", image, "localhost/switchyard:latest")
    build_s = build_side_images(services, skip=stack.replicas)
    try:
        up = stack.compose("up", "-d", "--no-build")
        assert up.returncode == 0, up.stdout[-4000:]
        # The replicas exit while PostgreSQL is not up yet (podman-compose does not wait for its
        # health); `restart: unless-stopped` brings them back until it is.
        sy.wait_until(stack.lb_ready, 120, interval=0.5, message="the load balancer's /readyz")
        for service in stack.replicas:
            sy.wait_until(lambda s=service: stack.replica_ready(s), 60, interval=0.5,
                          message=f"{service} /readyz")
        up_s = time.monotonic() - t_start - sum(build_s.values())
        check_hardening(stack)
        ids = check_jobs_through_one_port(stack)
        ids += check_replica_killed(stack, "switchyard-3")
        pg_stop_s = check_database_restart(stack, ids)
        print(f"images built in {build_s} s; stack up and ready in {up_s:.1f} s; postgres stopped in "
              f"{pg_stop_s:.1f} s; {time.monotonic() - t_start:.1f} s in all")
    except BaseException:
        stack.print_logs()
        raise
    finally:
        stack.down()
