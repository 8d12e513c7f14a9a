"""The monitoring stack in deploy/, checked with real tools against the real binary.

- The files: every YAML file under deploy/ parses, and the pieces agree with each other (compose
  mounts vs. the paths in prometheus.yml and the Grafana provisioning, the k8s manifests vs. the
  image and the server's options).
- ``promtool check config`` on a copy of deploy/prometheus.yml (target and rule path rewritten),
  ``promtool check rules`` on deploy/prometheus/switchyard-rules.yml, and ``promtool test rules``
  with unit tests of every alert (written here, run on a copy of the rules without annotations).
- Live: Switchyard (``--process-workers 2``) and a real Prometheus (Debian's /usr/bin/prometheus,
  scrape and evaluation interval 1 s) with the same rules file; jobs on both models for ~15 s;
  then the completed-jobs rate per model, ``promtool check metrics`` on /metrics, every PromQL
  expression of the Grafana dashboard and of the rules evaluated through the query API, and the
  rules' health.

Needs the Debian packages ``prometheus`` (prometheus, promtool) and ``python3-yaml``. Everything
listens on and talks to 127.0.0.1 only; every wait is bounded; Prometheus and Switchyard are
stopped at the end whatever happens (and die with the test runner: PR_SET_PDEATHSIG).
"""

import faulthandler
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
import sy_helpers as sy  # noqa: E402

try:
    import yaml
except ImportError:  # pragma: no cover - reported by the tests that need it
    yaml = None

REPO = sy.REPO_ROOT
DEPLOY = os.path.join(REPO, "deploy")
PROM_CONFIG = os.path.join(DEPLOY, "prometheus.yml")
RULES = os.path.join(DEPLOY, "prometheus", "switchyard-rules.yml")
DASHBOARD = os.path.join(DEPLOY, "grafana", "dashboards", "switchyard.json")
DATASOURCES = os.path.join(DEPLOY, "grafana", "provisioning", "datasources", "prometheus.yml")
DASH_PROVIDER = os.path.join(DEPLOY, "grafana", "provisioning", "dashboards", "switchyard.yml")
COMPOSE = os.path.join(DEPLOY, "docker-compose.yml")
COMPOSE_PG = os.path.join(DEPLOY, "compose-postgres.yml")
HAPROXY_CFG = os.path.join(DEPLOY, "lb", "haproxy.cfg")
K8S = os.path.join(DEPLOY, "k8s")
DOCKERFILE = os.path.join(REPO, "Dockerfile")

TRAFFIC_SECONDS = 15
PER_TEST_WATCHDOG_S = 120

# Grafana's built-in variables, replaced as a Grafana with a 1 s-scrape datasource might.
GRAFANA_BUILTINS = {
    "__rate_interval": "1m",
    "__interval_ms": "15000",
    "__interval": "15s",
    "__range_s": "300",
    "__range_ms": "300000",
    "__range": "5m",
}


# --- helpers -----------------------------------------------------------------------------------

def need_yaml():
    if yaml is None:
        pytest.fail("PyYAML is required (Debian package python3-yaml)")
    return yaml


def tool(name):
    path = shutil.which(name) or os.path.join("/usr/bin", name)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"{name} not found on PATH or in /usr/bin: install the Debian package "
                    f"'prometheus' (apt-get install -y --no-install-recommends prometheus)")
    return path


def run(args, input_text=None, timeout=60):
    return subprocess.run(args, input=input_text, text=True, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=timeout)


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return need_yaml().safe_load(f)


def load_yaml_all(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in need_yaml().safe_load_all(f) if d is not None]


def free_port():
    with socket.socket() as s:
        s.bind((sy.HOST, 0))
        return s.getsockname()[1]


def duration_s(text):
    """Seconds in a compose/Prometheus duration such as '40s', '1m30s', '500ms'."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    total, pos = 0.0, 0
    for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", str(text)):
        assert m.start() == pos, f"bad duration {text!r}"
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    assert pos == len(str(text)) and pos > 0, f"bad duration {text!r}"
    return total


def dashboard_targets(node, found=None):
    """Every (panel title, refId, expr) in a dashboard, rows and nested panels included."""
    found = [] if found is None else found
    if isinstance(node, dict):
        for t in node.get("targets") or []:
            if isinstance(t, dict) and t.get("expr"):
                found.append((node.get("title", "?"), t.get("refId", "?"), t["expr"]))
        for key, value in node.items():
            if key != "targets":
                dashboard_targets(value, found)
    elif isinstance(node, list):
        for item in node:
            dashboard_targets(item, found)
    return found


def grafana_substitute(expr, variables):
    """Replace Grafana's built-in and template variables; a template variable becomes '.*'."""
    for name in sorted(GRAFANA_BUILTINS, key=len, reverse=True):
        value = GRAFANA_BUILTINS[name]
        expr = re.sub(r"\$\{" + re.escape(name) + r"(?::[^}]*)?\}", value, expr)
        expr = re.sub(r"\$" + re.escape(name) + r"(?![A-Za-z0-9_])", value, expr)
    for name in variables:
        expr = re.sub(r"\$\{" + re.escape(name) + r"(?::[^}]*)?\}", ".*", expr)
        expr = re.sub(r"\[\[" + re.escape(name) + r"(?::[^\]]*)?\]\]", ".*", expr)
        expr = re.sub(r"\$" + re.escape(name) + r"(?![A-Za-z0-9_])", ".*", expr)
    assert "$" not in expr, f"unsubstituted Grafana variable in {expr!r}"
    return expr


def template_variable_queries(dash):
    """(name, PromQL) for each query variable: label_values(sel, label) -> count by (label) (sel)."""
    out = []
    for v in (dash.get("templating") or {}).get("list") or []:
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", q or "")
        assert m, f"variable {v.get('name')}: unsupported query {q!r} (expected label_values(...))"
        out.append((v["name"], f"count by ({m.group(2)}) ({m.group(1)})"))
    return out


def rule_list(rules_doc):
    return [r for g in rules_doc["groups"] for r in g["rules"]]


_METRIC_TOKEN = re.compile(r"(?<![A-Za-z0-9_:])(up|ALERTS|(?:switchyard|process)_[A-Za-z0-9_]+"
                           r"|[A-Za-z_][A-Za-z0-9_]*:[A-Za-z0-9_:]+)(?![A-Za-z0-9_:])")


def metric_names(expr):
    """Metric names an expression selects (ours, process_*, up, and level:metric:op rules)."""
    no_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    no_ranges = re.sub(r"\[[^\]]*\]", "[]", no_strings)
    return set(_METRIC_TOKEN.findall(no_ranges))


def api_get(port, path, timeout=10):
    r = sy.http_request(port, "GET", path, timeout=timeout)
    assert r.status == 200 and isinstance(r.body, dict) and r.body.get("status") == "success", \
        f"GET {path}: {r.status} {r.body!r}"
    return r.body["data"]


def prom_query(port, expr, timeout=15):
    """POST /api/v1/query; returns the decoded body (asserts nothing)."""
    r = sy.http_request(port, "POST", "/api/v1/query", raw=urllib.parse.urlencode({"query": expr}),
                        content_type="application/x-www-form-urlencoded", timeout=timeout)
    body = r.body if isinstance(r.body, dict) else {"status": "error", "error": r.body}
    return r.status, body


# --- the Prometheus under test -----------------------------------------------------------------

def local_prometheus_config(workdir, sy_port, prom_port, interval="1s"):
    """deploy/prometheus.yml with the targets on 127.0.0.1 and the repo's rules file.

    Only what must change for a local run changes: the target addresses, the rule file's path,
    and the intervals (1 s). Jobs other than switchyard and prometheus are dropped."""
    cfg = load_yaml(PROM_CONFIG)
    cfg.setdefault("global", {})
    cfg["global"].update({"scrape_interval": interval, "scrape_timeout": interval,
                          "evaluation_interval": interval})
    assert [os.path.basename(p) for p in cfg.get("rule_files", [])] == [os.path.basename(RULES)], \
        cfg.get("rule_files")
    cfg["rule_files"] = [RULES]
    targets = {"switchyard": f"{sy.HOST}:{sy_port}", "prometheus": f"{sy.HOST}:{prom_port}"}
    jobs = []
    for job in cfg["scrape_configs"]:
        if job["job_name"] not in targets:
            continue
        job.pop("scrape_interval", None)
        job.pop("scrape_timeout", None)
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        jobs.append(job)
    cfg["scrape_configs"] = jobs
    path = os.path.join(workdir, "prometheus.yml")
    with open(path, "w", encoding="utf-8") as f:
        need_yaml().safe_dump(cfg, f, sort_keys=False)
    return path




class Prometheus:
    def __init__(self, binary, workdir, sy_port):
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.config = local_prometheus_config(workdir, sy_port, self.port)
        self.log_path = os.path.join(workdir, "prometheus.log")
        self.proc = None

    def start(self, timeout=30):
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={self.config}",
                 f"--storage.tsdb.path={os.path.join(self.workdir, 'data')}",
                 "--storage.tsdb.retention.time=1h",
                 f"--web.listen-address={sy.HOST}:{self.port}",
                 f"--web.console.templates={os.path.join(self.workdir, 'consoles')}",
                 f"--web.console.libraries={os.path.join(self.workdir, 'console_libraries')}"],
                cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=sy._child_setup)
        finally:
            log.close()

        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}\n"
                                     f"{self.log_tail()}")
            try:
                return sy.http_request(self.port, "GET", "/-/ready", timeout=2).status == 200
            except OSError:
                return False
        try:
            sy.wait_until(ready, timeout, interval=0.1, message="prometheus /-/ready")
        except AssertionError as e:
            raise AssertionError(f"{e}\n{self.log_tail()}") from None
        return self

    def log_tail(self, n=30):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            lines = []
        return "--- prometheus log ---\n" + "\n".join(lines[-n:])

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def query(self, expr):
        return prom_query(self.port, expr)

    def query_ok(self, expr):
        status, body = self.query(expr)
        assert status == 200 and body.get("status") == "success" and not body.get("error"), \
            f"query {expr!r}: HTTP {status} {body!r}"
        return body["data"]


# --- traffic -----------------------------------------------------------------------------------

THREAD_JOBS = [{"type": "sleep", "input": {"ms": 50}, "model": "thread"}]
PROCESS_JOBS = [{"type": "noop", "model": "process"},
                {"type": "burn", "input": {"ms": 5}, "model": "process"},
                {"type": "hash", "input": {"data": "switchyard", "iterations": 100}, "model": "process"}]


def drive_traffic(server, seconds):
    """Synchronous job calls (Prefer: wait=5) on both models from a few client threads.

    Also a few calls that leave other traces: 422s and a 404 (HTTP errors), a timed-out thread
    job and a crashing process job (job errors, a worker restart). Returns {model: succeeded}."""
    wait = {"Prefer": "wait=5"}
    for _ in range(3):
        sy.assert_problem(server.submit("no-such-type"), 422)
    assert server.get("/v1/jobs/00000000-0000-0000-0000-000000000000").status == 404
    r = server.submit("sleep", {"ms": 300}, timeout_ms=50, headers=wait, timeout=15)
    assert r.status == 200 and r.body["status"] == "timed_out", (r.status, r.body)
    r = server.submit("crash", {"signal": "SEGV"}, model="process", headers=wait, timeout=15)
    assert r.status == 200 and r.body["status"] == "failed", (r.status, r.body)

    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    done = {"thread": 0, "process": 0}
    problems = []

    def client(jobs):
        for i in range(100000):
            if time.monotonic() >= deadline or len(problems) > 20:
                return
            body = jobs[i % len(jobs)]
            try:
                r = server.request("POST", "/v1/jobs", body, headers=wait, timeout=15)
            except OSError as e:
                problems.append(f"{body['type']}: {e!r}")
                time.sleep(0.1)
                continue
            if r.status == 200 and r.body.get("status") == "succeeded":
                with lock:
                    done[body["model"]] += 1
                time.sleep(0.01)  # a steady load, not a benchmark
            else:
                problems.append(f"{body['type']}: HTTP {r.status} {r.body!r}"[:300])
                time.sleep(0.1)

    threads = [threading.Thread(target=client, args=(THREAD_JOBS,), daemon=True) for _ in range(3)]
    threads += [threading.Thread(target=client, args=(PROCESS_JOBS,), daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 30)
    assert not any(t.is_alive() for t in threads), "traffic threads did not finish"
    assert not problems, f"job calls that did not succeed: {problems[:5]}"
    assert done["thread"] >= 20 and done["process"] >= 20, f"too few jobs completed: {done}"
    return done


# --- fixtures ----------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _watchdog():
    faulthandler.dump_traceback_later(PER_TEST_WATCHDOG_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def switchyard_bin():
    path = sy.switchyard_bin()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.skip(f"switchyard binary not found at {path} (build it or set SWITCHYARD_BIN)")
    return path


@pytest.fixture(scope="module")
def workdir():
    d = tempfile.mkdtemp(prefix="switchyard-prom-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(switchyard_bin, workdir):
    """Switchyard + Prometheus scraping it every second, after ~15 s of jobs on both models."""
    need_yaml()
    prometheus_bin = tool("prometheus")
    server = sy.Server(switchyard_bin, ["--process-workers", "2"])
    prom = None
    started = False
    try:
        server.start()
        prom = Prometheus(prometheus_bin, workdir, server.port).start()

        def target_up():
            data = api_get(prom.port, "/api/v1/targets?state=active")
            mine = [t for t in data["activeTargets"] if t["labels"].get("job") == "switchyard"]
            return mine and all(t["health"] == "up" for t in mine) and mine
        try:
            sy.wait_until(target_up, 20, interval=0.2, message="the switchyard target up")
        except AssertionError as e:
            data = api_get(prom.port, "/api/v1/targets")
            raise AssertionError(f"{e}\ntargets: {json.dumps(data)[:2000]}\n{prom.log_tail()}") \
                from None
        done = drive_traffic(server, TRAFFIC_SECONDS)
        started = True
        yield {"server": server, "prom": prom, "done": done}
    finally:
        if prom is not None:
            prom.stop()
        rc = server.stop(timeout=20) if server.proc is not None else None
        tail = server.log_tail()
        server.kill()
    assert rc == 0 or not started, f"switchyard exited {rc} after SIGTERM (None: not within 20 s)\n{tail}"


# --- the files ---------------------------------------------------------------------------------

def test_deploy_files_parse_and_agree(switchyard_bin):
    need_yaml()
    # Every YAML file parses; the dashboard is JSON.
    yaml_files = []
    for root, _, files in os.walk(DEPLOY):
        yaml_files += [os.path.join(root, f) for f in files if f.endswith((".yml", ".yaml"))]
    assert len(yaml_files) >= 12, yaml_files
    for path in yaml_files:
        docs = load_yaml_all(path)
        assert docs and all(isinstance(d, dict) for d in docs), f"{path}: not a YAML mapping"
    with open(DASHBOARD, encoding="utf-8") as f:
        dash = json.load(f)

    # The server's option names: every SWITCHYARD_* variable we set must be one.
    help_text = run([switchyard_bin, "--help"], timeout=20).stdout
    known_env = set(re.findall(r"Env:(SWITCHYARD_[A-Z0-9_]+)", help_text))
    assert "SWITCHYARD_LISTEN" in known_env, help_text[:2000]
    drain_default_ms = int(re.search(r"--drain-grace-ms [^\n]*?=(\d+)", help_text).group(1))
    with open(DOCKERFILE, encoding="utf-8") as f:
        dockerfile = f.read()
    image_uid = int(re.search(r"--uid\s+(\d+)", dockerfile).group(1))

    # docker-compose.yml
    compose = load_yaml(COMPOSE)
    services = compose["services"]
    sy_svc, prom_svc, graf_svc = services["switchyard"], services["prometheus"], services["grafana"]
    assert os.path.isfile(os.path.join(DEPLOY, sy_svc["build"]["context"],
                                       sy_svc["build"]["dockerfile"]))
    env = sy_svc.get("environment") or {}
    assert not set(env) - known_env, f"unknown options in compose: {set(env) - known_env}"
    assert sy_svc["healthcheck"]["test"][:3] == ["CMD", "switchyard", "healthcheck"]
    drain_ms = int(env.get("SWITCHYARD_DRAIN_GRACE_MS", drain_default_ms))
    assert duration_s(sy_svc["stop_grace_period"]) > drain_ms / 1000 + 2, \
        "stop_grace_period must exceed the drain grace"
    assert "${PUBLISH:-8080}:8080" in [str(p) for p in sy_svc["ports"]]
    assert any(str(v).split(":")[1] == "/var/lib/switchyard" for v in sy_svc["volumes"])

    def mounts(svc):
        out = {}
        for v in svc["volumes"]:
            src, dst = str(v).split(":")[:2]
            out[dst] = src
        return out
    prom_mounts, graf_mounts = mounts(prom_svc), mounts(graf_svc)
    config_flag = [a for a in prom_svc["command"] if a.startswith("--config.file=")][0]
    config_in_container = config_flag.split("=", 1)[1]
    assert os.path.samefile(os.path.join(DEPLOY, prom_mounts[config_in_container]), PROM_CONFIG)
    prom_cfg = load_yaml(PROM_CONFIG)
    (rule_file,) = prom_cfg["rule_files"]
    rules_dir_in_container, rules_name = os.path.split(rule_file)
    assert os.path.samefile(
        os.path.join(DEPLOY, prom_mounts[rules_dir_in_container], rules_name), RULES), \
        f"{rule_file} is not deploy/prometheus/switchyard-rules.yml in the compose mounts"
    (sy_job,) = [j for j in prom_cfg["scrape_configs"] if j["job_name"] == "switchyard"]
    assert sy_job["static_configs"][0]["targets"] == ["switchyard:8080"]
    assert duration_s(prom_cfg["global"]["scrape_interval"]) == 5

    # Grafana provisioning
    ds_doc = load_yaml(DATASOURCES)
    (ds,) = ds_doc["datasources"]
    assert ds["type"] == "prometheus" and ds["uid"] == "prometheus"
    ds_host = urllib.parse.urlsplit(ds["url"])
    assert ds_host.hostname in services and ds_host.port == 9090
    (provider,) = load_yaml(DASH_PROVIDER)["providers"]
    assert provider["type"] == "file"
    assert os.path.samefile(os.path.join(DEPLOY, graf_mounts[provider["options"]["path"]]),
                            os.path.dirname(DASHBOARD))
    assert os.path.samefile(os.path.join(DEPLOY, graf_mounts["/etc/grafana/provisioning"]),
                            os.path.join(DEPLOY, "grafana", "provisioning"))

    # The dashboard: unique ids, every panel and target on the provisioned datasource.
    assert dash["uid"] and dash["schemaVersion"] >= 36
    ids = []

    def walk(panels):
        for p in panels:
            ids.append(p["id"])
            if p["type"] != "row":
                assert p["datasource"] == {"type": "prometheus", "uid": ds["uid"]}, p["title"]
                assert p["targets"], p["title"]
                for t in p["targets"]:
                    assert t["datasource"]["uid"] == ds["uid"], p["title"]
            walk(p.get("panels") or [])
    walk(dash["panels"])
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert sum(1 for p in dash["panels"] if p["type"] == "timeseries") >= 10

    # Kubernetes
    kust = load_yaml(os.path.join(K8S, "kustomization.yaml"))
    objs = {}
    # servicemonitor.yaml is opt-in (it needs the Prometheus Operator's CRDs): check it too.
    assert "servicemonitor.yaml" not in kust["resources"]
    for name in kust["resources"] + ["servicemonitor.yaml"]:
        for doc in load_yaml_all(os.path.join(K8S, name)):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{name}: {doc.keys()}"
            objs[(doc["kind"], doc["metadata"]["name"])] = doc
    assert {"Namespace", "ConfigMap", "StatefulSet", "Service", "ServiceMonitor",
            "HorizontalPodAutoscaler"} <= {kind for kind, _ in objs}

    def the(kind):
        (doc,) = [d for (k, _), d in objs.items() if k == kind]
        return doc
    cm, dep = the("ConfigMap"), the("StatefulSet")
    svc, headless = objs[("Service", "switchyard")], objs[("Service", "switchyard-pods")]
    smon, hpa = the("ServiceMonitor"), the("HorizontalPodAutoscaler")
    assert all(isinstance(v, str) for v in cm["data"].values()), "ConfigMap values must be strings"
    assert not set(cm["data"]) - known_env, f"unknown options: {set(cm['data']) - known_env}"
    assert cm["data"]["SWITCHYARD_LISTEN"] == "0.0.0.0:8080"
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    (c,) = spec["containers"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert c["envFrom"] == [{"configMapRef": {"name": cm["metadata"]["name"]}}]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 8080}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    sc, psc = c["securityContext"], spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == image_uid == sc["runAsUser"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounted = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in spec["volumes"]}
    # The store on a volume of its own per replica, that outlives the pod; /tmp in memory.
    assert "emptyDir" in vols[mounted["/tmp"]]
    claims = {t["metadata"]["name"]: t for t in dep["spec"]["volumeClaimTemplates"]}
    data = mounted[cm["data"]["SWITCHYARD_DATA_DIR"]]
    assert data in claims and data not in vols, "the data directory must be a PersistentVolumeClaim"
    assert claims[data]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert cm["data"].get("SWITCHYARD_STORE", "sqlite") == "sqlite"
    assert dep["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    pre_stop = c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    pre_stop_s = float(pre_stop[1]) if pre_stop[:1] == ["sleep"] else 0
    k8s_drain_ms = int(cm["data"].get("SWITCHYARD_DRAIN_GRACE_MS", drain_default_ms))
    assert spec["terminationGracePeriodSeconds"] > pre_stop_s + k8s_drain_ms / 1000 + 2
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and int(ann["prometheus.io/port"]) == 8080
    assert ann["prometheus.io/path"] == "/metrics"
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    svc_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    assert svc_ports["http"]["targetPort"] in ports
    assert smon["apiVersion"] == "monitoring.coreos.com/v1"
    assert smon["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert {e["port"] for e in smon["spec"]["endpoints"]} <= set(svc_ports)
    assert svc["metadata"]["labels"][smon["spec"]["jobLabel"]] == "switchyard", \
        "the alerts expect job=\"switchyard\""
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "StatefulSet"
    assert c["resources"]["requests"]["cpu"], "a CPU HPA needs CPU requests"

    # deploy/README.md documents every alert.
    with open(os.path.join(DEPLOY, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    missing = [r["alert"] for r in rule_list(load_yaml(RULES))
               if "alert" in r and f"`{r['alert']}`" not in readme]
    assert not missing, f"alerts missing from deploy/README.md: {missing}"


def test_compose_postgres_files_agree(switchyard_bin):
    """deploy/compose-postgres.yml, deploy/lb/haproxy.cfg and the server's options agree (the stack
    itself runs in test_image.py): three replicas with one configuration on the postgres store,
    the database URL naming the postgres service with the password it is given, one published
    port (the load balancer's), HAProxy's servers being the replicas on the image's port with
    timeouts above the longest wait, and every service hardened."""
    help_text = run([switchyard_bin, "--help"], timeout=20).stdout
    known_env = set(re.findall(r"Env:(SWITCHYARD_[A-Z0-9_]+)", help_text))
    drain_default_ms = int(re.search(r"--drain-grace-ms [^\n]*?=(\d+)", help_text).group(1))
    max_wait_default_s = float(re.search(r"--max-wait-s [^\n]*?=([\d.]+)", help_text).group(1))
    with open(DOCKERFILE, encoding="utf-8") as f:
        image_port = int(re.search(r"SWITCHYARD_LISTEN=[\d.]+:(\d+)", f.read()).group(1))

    services = load_yaml(COMPOSE_PG)["services"]
    replicas = sorted(name for name in services if name.startswith("switchyard-"))
    assert replicas == ["switchyard-1", "switchyard-2", "switchyard-3"], sorted(services)
    first = services[replicas[0]]
    assert all(services[name] == first for name in replicas), "the replicas must share one configuration"
    env = first["environment"]
    assert not set(env) - known_env, f"unknown options: {set(env) - known_env}"
    assert env["SWITCHYARD_STORE"] == "postgres"
    url = urllib.parse.urlsplit(env["SWITCHYARD_DATABASE_URL"])
    pg = services["postgres"]
    pg_env = pg.get("environment") or {}
    assert url.scheme == "postgresql" and url.hostname == "postgres" and url.port == 5432, url
    assert url.username == pg_env.get("POSTGRES_USER", "switchyard")
    assert url.path == "/" + pg_env.get("POSTGRES_DB", "switchyard")
    assert url.password == pg_env["POSTGRES_PASSWORD"], "the replicas and the database must get one password"
    assert first["depends_on"]["postgres"]["condition"] == "service_healthy" and pg["healthcheck"]["test"]
    drain_ms = int(env.get("SWITCHYARD_DRAIN_GRACE_MS", drain_default_ms))
    assert duration_s(first["stop_grace_period"]) > drain_ms / 1000 + 2, \
        "stop_grace_period must exceed the drain grace"
    assert first["restart"] == "unless-stopped", "a replica exits when the database is not up yet"

    # One published port, the load balancer's; the rest only on the compose network.
    assert [name for name, svc in services.items() if svc.get("ports")] == ["lb"]
    (published,) = [str(p) for p in services["lb"]["ports"]]
    assert published.startswith("${PUBLISH:-8080}:"), published
    lb_port = int(published.rsplit(":", 1)[1])
    for name, svc in services.items():
        build = svc["build"]
        dockerfile = os.path.join(DEPLOY, build["context"], build.get("dockerfile", "Dockerfile"))
        assert os.path.isfile(dockerfile), name
        assert svc["read_only"] is True and svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
        assert svc["healthcheck"]["test"], name

    with open(HAPROXY_CFG, encoding="utf-8") as f:
        cfg = f.read()
    servers = re.findall(r"^\s*server\s+(\S+)\s+([^\s:]+):(\d+)", cfg, re.M)
    assert [name for name, _, _ in servers] == replicas and [host for _, host, _ in servers] == replicas
    assert {int(port) for _, _, port in servers} == {image_port}
    assert [int(p) for p in re.findall(r"^\s*bind\s+\S*:(\d+)", cfg, re.M)] == [lb_port]
    max_wait_s = float(env.get("SWITCHYARD_MAX_WAIT_S", max_wait_default_s))
    for side in ("server", "client"):
        (value,) = re.findall(rf"^\s*timeout\s+{side}\s+(\S+)", cfg, re.M)
        assert duration_s(value) > max_wait_s, f"timeout {side} {value} would cut a {max_wait_s} s long-poll"
    assert re.search(r"^\s*http-check\s+send\s+meth\s+GET\s+uri\s+/readyz\s*$", cfg, re.M)
    assert re.search(r"^\s*http-check\s+expect\s+status\s+200\s*$", cfg, re.M)


def test_promtool_check_config_and_rules(workdir):
    promtool = tool("promtool")
    r = run([promtool, "check", "rules", RULES])
    assert r.returncode == 0, r.stdout
    config = local_prometheus_config(workdir, 8080, 9090)
    r = run([promtool, "check", "config", config])
    assert r.returncode == 0, r.stdout


# Unit tests of the alerts (`promtool test rules`). Instance "sy:8080" of job "switchyard".
ALERT_TESTS = r"""
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'up{job="switchyard", instance="sy:8080"}'
        values: '1 1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0'
      - series: 'switchyard_workers{job="switchyard", instance="sy:8080", model="process"}'
        values: '2 2 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0'
      - series: 'switchyard_workers{job="switchyard", instance="sy:8080", model="thread"}'
        values: '2x16'
      - series: 'switchyard_jobs_queued{job="switchyard", instance="sy:8080", model="process"}'
        values: '0 150 150 150 150 150 150 150 150 150 150 150 150 150 150 150 150'
      - series: 'switchyard_jobs_queued{job="switchyard", instance="sy:8080", model="thread"}'
        values: '0 50 50 50 50 50 50 50 50 50 50 50 50 50 50 50 50'
      - series: 'switchyard_worker_restarts_total{job="switchyard", instance="sy:8080", reason="crash"}'
        values: '0+30x16'
      - series: 'switchyard_worker_restarts_total{job="switchyard", instance="sy:8080", reason="recycle"}'
        values: '0+120x16'
      - series: 'switchyard_worker_restarts_total{job="switchyard", instance="sy:8080", reason="timeout"}'
        values: '0x16'
      - series: 'switchyard_jobs_completed_total{job="switchyard", instance="sy:8080", model="thread", type="sleep", status="succeeded"}'
        values: '0+180x16'
      - series: 'switchyard_jobs_completed_total{job="switchyard", instance="sy:8080", model="thread", type="sleep", status="failed"}'
        values: '0+60x16'
      - series: 'switchyard_jobs_completed_total{job="switchyard", instance="sy:8080", model="thread", type="sleep", status="timed_out"}'
        values: '0x16'
      - series: 'switchyard_jobs_completed_total{job="switchyard", instance="sy:8080", model="process", type="burn", status="succeeded"}'
        values: '0+120x16'
      - series: 'switchyard_jobs_completed_total{job="switchyard", instance="sy:8080", model="process", type="burn", status="failed"}'
        values: '0x16'
      - series: 'switchyard_job_queue_seconds_bucket{job="switchyard", instance="sy:8080", model="process", le="1"}'
        values: '0x16'
      - series: 'switchyard_job_queue_seconds_bucket{job="switchyard", instance="sy:8080", model="process", le="30"}'
        values: '0+60x16'
      - series: 'switchyard_job_queue_seconds_bucket{job="switchyard", instance="sy:8080", model="process", le="+Inf"}'
        values: '0+60x16'
      - series: 'switchyard_job_queue_seconds_bucket{job="switchyard", instance="sy:8080", model="thread", le="1"}'
        values: '0+60x16'
      - series: 'switchyard_job_queue_seconds_bucket{job="switchyard", instance="sy:8080", model="thread", le="30"}'
        values: '0+60x16'
      - series: 'switchyard_job_queue_seconds_bucket{job="switchyard", instance="sy:8080", model="thread", le="+Inf"}'
        values: '0+60x16'
      - series: 'switchyard_http_requests_total{job="switchyard", instance="sy:8080", method="POST", route="/v1/jobs", code="202"}'
        values: '0+600x16'
      - series: 'switchyard_http_requests_total{job="switchyard", instance="sy:8080", method="POST", route="/v1/jobs", code="503"}'
        values: '0+120x16'
      - series: 'switchyard_http_requests_total{job="switchyard", instance="sy:8080", method="POST", route="/v1/jobs", code="429"}'
        values: '0+60x16'
      - series: 'switchyard_http_requests_total{job="switchyard", instance="sy:8080", method="GET", route="/readyz", code="503"}'
        values: '0+12x16'
      - series: 'switchyard_http_requests_total{job="switchyard", instance="sy:8080", method="GET", route="/metrics", code="200"}'
        values: '0+60x16'
      - series: 'switchyard_http_requests_total{job="switchyard", instance="sy:8080", method="GET", route="/v1/jobs/{id}", code="500"}'
        values: '0 0 0 1 1 1 1 1 1 1 1 1 1 1 1 1 1'
    promql_expr_test:
      - expr: model:switchyard_jobs_completed:rate1m
        eval_time: 10m
        exp_samples:
          - labels: 'model:switchyard_jobs_completed:rate1m{model="thread"}'
            value: 4
          - labels: 'model:switchyard_jobs_completed:rate1m{model="process"}'
            value: 2
      - expr: instance_model:switchyard_jobs_errors:ratio_rate5m
        eval_time: 10m
        exp_samples:
          - labels: 'instance_model:switchyard_jobs_errors:ratio_rate5m{job="switchyard", instance="sy:8080", model="thread"}'
            value: 0.25
          - labels: 'instance_model:switchyard_jobs_errors:ratio_rate5m{job="switchyard", instance="sy:8080", model="process"}'
            value: 0
      - expr: instance_reason:switchyard_worker_restarts:rate5m
        eval_time: 10m
        exp_samples:
          - labels: 'instance_reason:switchyard_worker_restarts:rate5m{job="switchyard", instance="sy:8080", reason="crash"}'
            value: 0.5
          - labels: 'instance_reason:switchyard_worker_restarts:rate5m{job="switchyard", instance="sy:8080", reason="recycle"}'
            value: 2
          - labels: 'instance_reason:switchyard_worker_restarts:rate5m{job="switchyard", instance="sy:8080", reason="timeout"}'
            value: 0
    alert_rule_test:
      - {eval_time: 2m, alertname: SwitchyardTargetDown, exp_alerts: []}
      - eval_time: 4m
        alertname: SwitchyardTargetDown
        exp_alerts:
          - exp_labels: {severity: critical, job: switchyard, instance: "sy:8080"}
      - {eval_time: 3m, alertname: SwitchyardProcessPoolDown, exp_alerts: []}
      - eval_time: 5m
        alertname: SwitchyardProcessPoolDown
        exp_alerts:
          - exp_labels: {severity: critical, job: switchyard, instance: "sy:8080", model: process}
      - {eval_time: 4m, alertname: SwitchyardNotReady, exp_alerts: []}
      - eval_time: 10m
        alertname: SwitchyardNotReady
        exp_alerts:
          - exp_labels: {severity: warning, job: switchyard, instance: "sy:8080"}
      - {eval_time: 5m, alertname: SwitchyardQueueBacklog, exp_alerts: []}
      - eval_time: 7m
        alertname: SwitchyardQueueBacklog
        exp_alerts:
          - exp_labels: {severity: warning, job: switchyard, instance: "sy:8080", model: process}
      - {eval_time: 9m, alertname: SwitchyardQueueWaitHigh, exp_alerts: []}
      - eval_time: 15m
        alertname: SwitchyardQueueWaitHigh
        exp_alerts:
          - exp_labels: {severity: warning, job: switchyard, instance: "sy:8080", model: process}
      - {eval_time: 4m, alertname: SwitchyardAdmissionRejected, exp_alerts: []}
      - eval_time: 10m
        alertname: SwitchyardAdmissionRejected
        exp_alerts:
          - exp_labels: {severity: warning, job: switchyard, instance: "sy:8080"}
      - {eval_time: 5m, alertname: SwitchyardWorkerRestartStorm, exp_alerts: []}
      - eval_time: 10m
        alertname: SwitchyardWorkerRestartStorm
        exp_alerts:
          - exp_labels: {severity: warning, job: switchyard, instance: "sy:8080", reason: crash}
      - {eval_time: 9m, alertname: SwitchyardJobErrorRatioHigh, exp_alerts: []}
      - eval_time: 15m
        alertname: SwitchyardJobErrorRatioHigh
        exp_alerts:
          - exp_labels: {severity: warning, job: switchyard, instance: "sy:8080", model: thread}
      - {eval_time: 4m, alertname: SwitchyardHTTP5xxRatioHigh, exp_alerts: []}
      - eval_time: 10m
        alertname: SwitchyardHTTP5xxRatioHigh
        exp_alerts:
          - exp_labels: {severity: critical, job: switchyard, instance: "sy:8080"}
      - {eval_time: 3m, alertname: SwitchyardInternalServerError, exp_alerts: []}
      - eval_time: 5m
        alertname: SwitchyardInternalServerError
        exp_alerts:
          - exp_labels: {severity: warning, job: switchyard, instance: "sy:8080", route: "/v1/jobs/{id}"}
      - {eval_time: 16m, alertname: SwitchyardInternalServerError, exp_alerts: []}
      - {eval_time: 10m, alertname: SwitchyardTargetMissing, exp_alerts: []}

  - interval: 1m
    input_series:
      - series: 'up{job="prometheus", instance="localhost:9090"}'
        values: '1x10'
    alert_rule_test:
      - {eval_time: 4m, alertname: SwitchyardTargetMissing, exp_alerts: []}
      - eval_time: 6m
        alertname: SwitchyardTargetMissing
        exp_alerts:
          - exp_labels: {severity: warning, job: switchyard}
      - {eval_time: 6m, alertname: SwitchyardTargetDown, exp_alerts: []}

  - interval: 1m
    input_series:
      - series: 'switchyard_store_commits_total{job="switchyard", instance="sy:8080", result="error"}'
        values: '0x5 0 1 2 3 3 3 3 3 3 3 3 3 3 3 3'
    alert_rule_test:
      - {eval_time: 5m, alertname: SwitchyardStoreWriteErrors, exp_alerts: []}
      - eval_time: 8m
        alertname: SwitchyardStoreWriteErrors
        exp_alerts:
          - exp_labels: {severity: critical, job: switchyard, instance: "sy:8080"}
      - {eval_time: 16m, alertname: SwitchyardStoreWriteErrors, exp_alerts: []}
"""


def test_alert_rules_unit(workdir):
    """`promtool test rules` on the rules (annotations removed: the tests check when each alert
    fires and with which labels; promtool check rules has parsed the annotation templates)."""
    promtool = tool("promtool")
    doc = load_yaml(RULES)
    alerts = set()
    for rule in rule_list(doc):
        if "alert" in rule:
            alerts.add(rule["alert"])
            assert rule.get("for") is not None, f"{rule['alert']}: no 'for'"
            assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
            assert rule["annotations"].get("summary") and rule["annotations"].get("description"), \
                rule["alert"]
            rule.pop("annotations")
    rules_copy = os.path.join(workdir, "rules-without-annotations.yml")
    with open(rules_copy, "w", encoding="utf-8") as f:
        need_yaml().safe_dump(doc, f, sort_keys=False)
    tests_doc = need_yaml().safe_load(ALERT_TESTS)
    tested = {t["alertname"] for group in tests_doc["tests"] for t in group.get("alert_rule_test", [])}
    assert alerts == tested, f"alerts without a unit test: {alerts - tested}; " \
                             f"tests of unknown alerts: {tested - alerts}"
    tests_doc["rule_files"] = [rules_copy]
    tests_path = os.path.join(workdir, "rules-test.yml")
    with open(tests_path, "w", encoding="utf-8") as f:
        need_yaml().safe_dump(tests_doc, f, sort_keys=False)
    r = run([promtool, "test", "rules", tests_path])
    assert r.returncode == 0, r.stdout


# --- live: Switchyard scraped by Prometheus ----------------------------------------------------

def test_completed_rate_per_model(stack):
    prom = stack["prom"]
    expr = "sum by (model) (rate(switchyard_jobs_completed_total[1m]))"
    holder = {}

    def both_nonzero():
        result = prom.query_ok(expr)["result"]
        holder["last"] = result
        values = {s["metric"].get("model"): float(s["value"][1]) for s in result}
        return values.get("thread", 0) > 0 and values.get("process", 0) > 0 and values
    values = sy.wait_until(both_nonzero, 20, interval=0.5,
                           message=f"{expr} > 0 for thread and process (last {holder.get('last')})")
    print(f"{expr}: {values}; jobs that succeeded: {stack['done']}")
    # The recording rule over the same data.
    rec = {s["metric"]["model"]: float(s["value"][1])
           for s in prom.query_ok("model:switchyard_jobs_completed:rate1m")["result"]}
    assert rec.get("thread", 0) > 0 and rec.get("process", 0) > 0, rec


def test_metrics_pass_promtool_lint(stack):
    promtool = tool("promtool")
    r = stack["server"].get("/metrics")
    assert r.status == 200, r.status
    assert r.headers.get("Content-Type", "").startswith("text/plain; version=0.0.4"), r.headers
    check = run([promtool, "check", "metrics"], input_text=r.body)
    assert check.returncode == 0 and not check.stdout.strip(), \
        f"promtool check metrics (exit {check.returncode}):\n{check.stdout}"


def test_dashboard_queries_evaluate(stack):
    """Every PromQL expression of the dashboard runs, and returns data (the traffic made some)."""
    prom = stack["prom"]
    with open(DASHBOARD, encoding="utf-8") as f:
        dash = json.load(f)
    variables = [v["name"] for v in (dash.get("templating") or {}).get("list") or []]
    targets = dashboard_targets(dash)
    assert len(targets) >= 20, f"only {len(targets)} targets found"
    known = set(api_get(prom.port, "/api/v1/label/__name__/values"))
    failures = []
    for name, raw in template_variable_queries(dash):
        expr = grafana_substitute(raw, variables)
        if not prom.query_ok(expr)["result"]:
            failures.append(f"variable {name}: {expr!r} returned nothing")
    for title, ref, raw in targets:
        expr = grafana_substitute(raw, variables)
        status, body = prom.query(expr)
        where = f"panel {title!r} {ref}: {expr!r}"
        if status != 200 or body.get("status") != "success" or body.get("error"):
            failures.append(f"{where}: HTTP {status} {body.get('errorType')} {body.get('error')}")
        elif body.get("warnings"):
            failures.append(f"{where}: warnings {body['warnings']}")
        elif not body["data"]["result"]:
            failures.append(f"{where}: no data")
        unknown = metric_names(expr) - known
        if unknown:
            failures.append(f"{where}: unknown metric names {sorted(unknown)}")
    assert not failures, "\n".join(failures)


def test_rule_expressions_evaluate_and_rules_are_healthy(stack):
    prom = stack["prom"]
    rules = rule_list(load_yaml(RULES))
    records = {r["record"] for r in rules if "record" in r}

    # Every rule evaluated at least once, without error.
    holder = {}

    def all_evaluated():
        groups = api_get(prom.port, "/api/v1/rules")["groups"]
        holder["groups"] = groups
        loaded = [r for g in groups for r in g["rules"]]
        return len(loaded) == len(rules) and all(r["health"] != "unknown" for r in loaded) and loaded
    loaded = sy.wait_until(all_evaluated, 15, interval=0.5, message="every rule evaluated")
    bad = [f"{r['name']}: health {r['health']} {r.get('lastError')}" for r in loaded
           if r["health"] != "ok" or r.get("lastError")]
    assert not bad, "\n".join(bad)

    known = set(api_get(prom.port, "/api/v1/label/__name__/values")) | records
    failures = []
    for rule in rules:
        name = rule.get("record") or rule.get("alert")
        status, body = prom.query(rule["expr"])
        if status != 200 or body.get("status") != "success" or body.get("error"):
            failures.append(f"{name}: HTTP {status} {body.get('errorType')} {body.get('error')}")
        elif body.get("warnings"):
            failures.append(f"{name}: warnings {body['warnings']}")
        unknown = metric_names(rule["expr"]) - known
        if unknown:
            failures.append(f"{name}: unknown metric names {sorted(unknown)}")
    # Every recording rule produced series.
    for record in sorted(records):
        if not prom.query_ok(record)["result"]:
            failures.append(f"recording rule {record}: no series")
    assert not failures, "\n".join(failures)

    # Nothing is pending or firing on a healthy server (one crash and one timeout are no storm).
    alerts = api_get(prom.port, "/api/v1/alerts")["alerts"]
    assert not alerts, f"alerts on a healthy server: {json.dumps(alerts, indent=1)[:3000]}"
