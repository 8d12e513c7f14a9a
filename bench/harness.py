"""Process plumbing for bench/scenarios.py: the servers (Switchyard, nginx, PostgreSQL), the load
tools (switchyard_loadgen, wrk, switchyard_bare_fork), a /proc sampler and CPU time by process tree.

Every process started here is registered and stopped by ``stop_all()`` (TERM, then KILL), and
dies with this one (PR_SET_PDEATHSIG) if it is killed outright. PostgreSQL is the exception: the
tests' TempPostgres starts it (through runuser as root), and it is stopped when its ``with``
block unwinds, which SIGTERM and Ctrl-C do too; only a SIGKILL of this process leaves it running.
Every tool call has a timeout. Traffic goes to 127.0.0.1 only.
"""

import ctypes
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request

HOST = "127.0.0.1"
_STARTED = []

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - non-glibc
    _prctl = None


def _die_with_parent():
    if _prctl is not None:
        _prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG


def spawn(args, **kwargs):
    """Popen that is registered for stop_all() and dies with this process."""
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent, **kwargs)
    _STARTED.append(proc)
    return proc


def stop(proc, grace=5.0):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc in _STARTED:
        _STARTED.remove(proc)


def stop_all():
    for proc in list(_STARTED):
        stop(proc)


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def http_status(port, path, timeout=1.0):
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as resp:
            return resp.status
    except OSError:
        return None


def wait_for(port, path, proc, timeout=15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before it answered")
        if http_status(port, path) == 200:
            return
        time.sleep(0.05)
    raise RuntimeError(f"{proc.args[0]} did not answer {path} within {timeout}s")


class Switchyard:
    """The server under test on a free loopback port, diagnostics on; in memory unless ``store``
    names another (then ``store_flags`` are added: sqlite keeps its data in a temp dir, postgres
    needs ``--database-url`` among them)."""

    def __init__(self, binary, flags=(), store="memory", store_flags=()):
        self.port = free_port()
        args = [binary, "--listen", f"{HOST}:{self.port}", "--diagnostics", "--log-level", "warn"]
        self.data_dir = None
        if "--store" in subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10).stdout:
            args += ["--store", store]  # durable stores: scenarios 7 and 8 only
            if store == "sqlite":
                self.data_dir = tempfile.mkdtemp(prefix="switchyard-bench-data-")
                args += ["--data-dir", self.data_dir]
            args += list(store_flags)
        self.args = args + list(flags)
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = None

    def __enter__(self):
        self.proc = spawn(self.args, stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self.port, "/readyz", self.proc)
        return self

    def __exit__(self, *exc):
        stop(self.proc, grace=15.0)
        self.log.close()
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    @property
    def pid(self):
        return self.proc.pid

    def stats(self):
        with urllib.request.urlopen(f"http://{HOST}:{self.port}/v1/stats", timeout=5) as resp:
            return json.load(resp)


def _pg_helpers():
    """tests/integration/pg_helpers.py, loaded by path (the bench shares the tests' TempPostgres)."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "integration", "pg_helpers.py")
    spec = importlib.util.spec_from_file_location("pg_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Postgres:
    """A throw-away PostgreSQL for ``--store postgres``: the tests' TempPostgres (Debian's package,
    initdb in a temp dir, 127.0.0.1 only). ``durable=True`` runs it as a real server would, with
    fsync, synchronous_commit and full_page_writes on; False is the tests' setting (all off)."""

    def __init__(self, durable=True):
        self.server = _pg_helpers().TempPostgres(durable=durable)

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *exc):
        self.server.stop()

    @property
    def url(self):
        return self.server.url

    @property
    def pid(self):
        """The process whose tree holds the postmaster and every backend."""
        return self.server.proc.pid

    def reset(self):
        """Empties Switchyard's tables and checkpoints, so that each measurement starts alike.
        Only while no server uses the database."""
        self.server.psql("TRUNCATE switchyard_jobs, switchyard_idempotency_keys, switchyard_replicas")
        self.server.psql("CHECKPOINT")


def tree_cpu_s(*roots):
    """CPU seconds (user + system) used so far by the processes ``roots`` and all their live
    descendants, children they have reaped included (from /proc/<pid>/stat)."""
    parent, used = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # exited meanwhile
        parent[int(entry)] = int(fields[1])
        used[int(entry)] = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    children = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0, [r for r in roots if r in used]
    while todo:
        pid = todo.pop()
        total += used[pid]
        todo += children.get(pid, [])
    return total / os.sysconf("SC_CLK_TCK")


NGINX_CONF = """\
{user}worker_processes {workers};
daemon off;
master_process on;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {root}/body;
  proxy_temp_path {root}/proxy;
  fastcgi_temp_path {root}/fastcgi;
  uwsgi_temp_path {root}/uwsgi;
  scgi_temp_path {root}/scgi;
  keepalive_requests 100000000;
  server {{
    listen {host}:{port};
    default_type application/json;
    location = /healthz {{ return 200 '{health}'; }}
    location = /v1/jobs {{ return 202 '{job}'; }}
  }}
}}
"""

# Bodies of the sizes Switchyard answers with: /healthz, and a 202 to POST /v1/jobs.
NGINX_HEALTH = '{"status":"ok"}'
NGINX_JOB = ('{"attempts":0,"cpu_ms":null,"created_at":"2026-11-25T09:59:00.262Z","error":null,'
             '"finished_at":null,"id":"01a21224-efa6-7077-a656-a546cb3fda1b","input":{},"model":"thread",'
             '"priority":0,"queue_ms":null,"result":null,"run_ms":null,"started_at":null,"status":"queued",'
             '"timeout_ms":30000,"type":"noop","worker_pid":null}')


class Nginx:
    """Debian's nginx with its own prefix and configuration in a temp dir, not the system service."""

    def __init__(self, workers):
        self.root = tempfile.mkdtemp(prefix="switchyard-bench-nginx-")
        self.port = free_port()
        conf = NGINX_CONF.format(user="user root;\n" if os.getuid() == 0 else "", workers=workers,
                                 root=self.root, host=HOST, port=self.port, health=NGINX_HEALTH, job=NGINX_JOB)
        self.conf = os.path.join(self.root, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(conf)
        self.proc = None

    def __enter__(self):
        self.proc = spawn(["nginx", "-p", self.root, "-c", self.conf, "-e", f"{self.root}/error.log"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.port, "/healthz", self.proc)
        return self

    def __exit__(self, *exc):
        stop(self.proc)  # SIGTERM: nginx's fast shutdown, workers included


def run_json(args, timeout):
    """Runs a tool that prints one JSON object; exit status 1 (some job not succeeded) still
    gives its report, which carries the counts."""
    proc = spawn(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        stop(proc)
    if proc.returncode not in (0, 1) or not out.strip():
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {err.strip()[-500:]}")
    return json.loads(out)


def _ports(port):
    return ",".join(map(str, port)) if isinstance(port, (list, tuple)) else str(port)


class Tools:
    """Paths of the bench binaries and the shared bounds of every call."""

    def __init__(self, build_dir):
        self.switchyard = os.path.join(build_dir, "server", "switchyard")
        self.loadgen_bin = os.path.join(build_dir, "bench", "switchyard_loadgen")
        self.bare_fork_bin = os.path.join(build_dir, "bench", "switchyard_bare_fork")

    def loadgen(self, port, *args, deadline=120):
        """``port``: one port, or a list of them (replicas; the connections go round-robin)."""
        return run_json([self.loadgen_bin, "--port", _ports(port), "--deadline", str(deadline), *map(str, args)],
                        timeout=deadline + 30)

    def loadgen_async(self, port, *args, deadline=120):
        """A loadgen running in the background; finish it with ``collect``."""
        argv = [self.loadgen_bin, "--port", _ports(port), "--deadline", str(deadline), *map(str, args)]
        return spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), deadline + 30

    @staticmethod
    def collect(started):
        proc, timeout = started
        try:
            out, _ = proc.communicate(timeout=timeout)
        finally:
            stop(proc)
        return json.loads(out)

    def bare_fork(self, *args):
        return run_json([self.bare_fork_bin, *map(str, args)], timeout=300)


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url, connections, seconds, script=None):
    """wrk -t1 with --latency; returns {"rps", "p50", "p90", "p99" (ms), "non_2xx", "socket_errors"}."""
    args = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    if script:
        args += ["-s", script]
    proc = spawn(args + [url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    finally:
        stop(proc)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    result = {"rps": float(rps.group(1))}
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        result[f"p{pct}"] = float(m.group(1)) * _UNITS[m.group(2)] if m else None
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result["non_2xx"] = int(non_2xx.group(1)) if non_2xx else 0
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    result["socket_errors"] = sum(int(x) for x in errors.groups()) if errors else 0
    result["socket_error_kinds"] = errors.group(0) if errors else ""
    latency_max = re.search(r"^\s+Latency\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out, re.M)
    result["max_ms"] = float(latency_max.group(1)) * _UNITS[latency_max.group(2)] if latency_max else None
    return result


def cpu_seconds(pid):
    """User + system CPU time of a process (all its threads, not its children), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()  # the name may hold spaces; fields after it
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


class ProcSampler(threading.Thread):
    """Samples a process's VmRSS and thread count every ``interval`` s until stopped."""

    def __init__(self, pid, interval=0.02):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_rss_kb, self.max_threads = 0, 0
        self._stop_event = threading.Event()

    def read(self):
        fields = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields[key] = value.split()
        return int(fields["VmRSS"][0]), int(fields["Threads"][0])

    def run(self):
        while not self._stop_event.is_set():
            rss, threads = self.read()
            self.peak_rss_kb, self.max_threads = max(self.peak_rss_kb, rss), max(self.max_threads, threads)
            self._stop_event.wait(self.interval)

    def finish(self):
        self._stop_event.set()
        self.join(5)
