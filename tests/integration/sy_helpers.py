"""Helpers for the Switchyard integration tests.

Standard library only. Everything talks to 127.0.0.1 and every loop is bounded in
count and time.

- ``Server``: starts the real binary on an ephemeral port, drains its stdout/stderr in
  background threads, waits for the "listening" log line and for ``/readyz``, and offers an
  HTTP helper returning ``Response(status, headers, body)`` (``body`` is the decoded JSON when
  the response is JSON, else text).
- /proc helpers for worker pids, zombies and thread counts.
- A Prometheus text-format parser, a raw HTTP/1.1 response reader (for pipelining tests), and
  assertion helpers for problem+json bodies.
"""

import ctypes
import http.client
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
import urllib.parse
from collections import namedtuple
from datetime import datetime, timezone

HOST = "127.0.0.1"
REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_BIN = os.path.join(REPO_ROOT, "build", "dev", "server", "switchyard")

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
JOB_FIELDS = (
    "id", "type", "model", "status", "priority", "timeout_ms", "attempts", "input", "result",
    "error", "created_at", "started_at", "finished_at", "queue_ms", "run_ms", "cpu_ms",
    "worker_pid",
)
MODEL_STATS_FIELDS = (
    "workers", "busy", "queued", "running", "submitted", "succeeded", "failed", "cancelled",
    "timed_out", "throughput_10s", "throughput_1m",
)
TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

# Servers currently running, so that conftest can attach their logs to failure reports.
LIVE_SERVERS = []

Response = namedtuple("Response", "status headers body")


def switchyard_bin():
    return os.environ.get("SWITCHYARD_BIN") or DEFAULT_BIN


def clean_env(extra=None):
    """The test runner's environment without any SWITCHYARD_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env.update(extra or {})
    return env


# --- child setup: the server dies with the test runner (no stray servers) -------------------

try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - non-glibc
    _prctl = None
_PR_SET_PDEATHSIG = 1
_SIGKILL = int(signal.SIGKILL)


def _child_setup():
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, _SIGKILL, 0, 0, 0)


# --- polling ---------------------------------------------------------------------------------

def wait_until(fn, timeout, interval=0.02, message="condition"):
    """Call ``fn`` until it returns a truthy value (returned) or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    last = None
    for _ in range(int(timeout / max(interval, 0.001)) + 2):
        last = fn()
        if last:
            return last
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}; last value: {last!r}")


# --- /proc -----------------------------------------------------------------------------------

def proc_stat(pid):
    """{'state', 'ppid', 'starttime'} of a process, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "r") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rest = data[data.rindex(")") + 2:].split()
    return {"state": rest[0], "ppid": int(rest[1]), "starttime": int(rest[19])}


def proc_identity(pid):
    """(pid, starttime): identifies a process even if its pid is later reused."""
    st = proc_stat(pid)
    return (pid, st["starttime"]) if st else None


def identity_state(ident):
    """'gone', 'zombie' or 'alive' for a (pid, starttime) identity."""
    pid, start = ident
    st = proc_stat(pid)
    if st is None or st["starttime"] != start:
        return "gone"
    return "zombie" if st["state"] in ("Z", "X") else "alive"


def children_of(pid):
    """Set of pids whose parent is ``pid``."""
    kids = set()
    task_dir = f"/proc/{pid}/task"
    try:
        tids = os.listdir(task_dir)
    except FileNotFoundError:
        return kids
    have_children_file = False
    for tid in tids:
        try:
            with open(f"{task_dir}/{tid}/children") as f:
                have_children_file = True
                kids.update(int(x) for x in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    if not have_children_file:  # kernel without CONFIG_PROC_CHILDREN: scan /proc
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                st = proc_stat(int(entry))
                if st and st["ppid"] == pid:
                    kids.add(int(entry))
    return kids


def thread_count(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    raise AssertionError(f"no Threads: line for pid {pid}")


# --- HTTP ------------------------------------------------------------------------------------

def _decode_body(headers, data):
    ctype = (headers.get("Content-Type") or "").lower()
    if "json" in ctype:
        try:
            return json.loads(data.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return data.decode("utf-8", "replace")
    return data.decode("utf-8", "replace")


def http_request(port, method, path, body=None, *, raw=None, headers=None, timeout=30.0,
                 content_type="application/json"):
    """One request on a fresh connection. ``body`` is JSON-encoded; ``raw`` is sent as is."""
    hdrs = dict(headers or {})
    data = None
    if body is not None:
        data = json.dumps(body).encode("utf-8")
    elif raw is not None:
        data = raw if isinstance(raw, bytes) else raw.encode("utf-8")
    if data is not None and content_type is not None and not any(
            k.lower() == "content-type" for k in hdrs):
        hdrs["Content-Type"] = content_type
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=data, headers=hdrs)
        resp = conn.getresponse()
        payload = resp.read()
        return Response(resp.status, resp.headers, _decode_body(resp.headers, payload))
    finally:
        conn.close()


def read_raw_response(f):
    """Read one HTTP/1.x response from a buffered binary file: (status, headers, body)."""
    line = f.readline(65537)
    if not line:
        raise ConnectionError("connection closed before a status line")
    parts = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/"):
        raise AssertionError(f"bad status line: {line!r}")
    status = int(parts[1])
    headers = {}
    for _ in range(1000):
        h = f.readline(65537)
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    if 100 <= status < 200 or status in (204, 304):
        body = b""
    elif "content-length" in headers:
        body = f.read(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        chunks = []
        for _ in range(100000):
            size = int(f.readline(1024).split(b";")[0].strip(), 16)
            if size == 0:
                for _ in range(100):  # trailers
                    if f.readline(65537) in (b"\r\n", b"\n", b""):
                        break
                break
            chunks.append(f.read(size))
            f.readline(3)
        body = b"".join(chunks)
    else:
        body = f.read()
    return status, headers, body


def raw_exchange(port, data, n_responses, timeout=10.0, shutdown_write=False):
    """Write ``data`` in one sendall and read ``n_responses`` responses in order."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(data)
        if shutdown_write:
            sock.shutdown(socket.SHUT_WR)
        f = sock.makefile("rb")
        try:
            return [read_raw_response(f) for _ in range(n_responses)]
        finally:
            f.close()


# --- assertions ------------------------------------------------------------------------------

def assert_problem(resp, status, code=None):
    """Assert an RFC 9457 problem+json error with our mandatory members; return the body."""
    assert resp.status == status, f"expected HTTP {status}, got {resp.status}: {resp.body!r}"
    ctype = resp.headers.get_content_type() if hasattr(resp.headers, "get_content_type") \
        else (resp.headers.get("content-type") or "").split(";")[0].strip().lower()
    assert ctype == "application/problem+json", f"content type {ctype!r} for {resp.body!r}"
    body = resp.body
    assert isinstance(body, dict), f"problem body is not a JSON object: {body!r}"
    for key in ("type", "title", "status", "detail", "code"):
        assert key in body, f"problem body lacks {key!r}: {body!r}"
    assert body["status"] == status, body
    for key in ("type", "title", "detail", "code"):
        assert isinstance(body[key], str), f"{key} is not a string: {body!r}"
    assert body["code"], body
    if code is not None:
        assert body["code"] == code, f"expected code {code!r}, got {body['code']!r}: {body!r}"
    if "errors" in body:
        assert isinstance(body["errors"], list), body
        for e in body["errors"]:
            assert isinstance(e, dict) and isinstance(e.get("path"), str) \
                and isinstance(e.get("message"), str), f"bad errors[] entry {e!r}"
    return body


def error_paths(body):
    return [e.get("path") for e in body.get("errors", []) if isinstance(e, dict)]


def assert_validation(resp, path, code=None):
    body = assert_problem(resp, 422, code)
    assert path in error_paths(body), f"expected errors[].path {path!r} in {body!r}"
    return body


def parse_ts(value):
    assert isinstance(value, str) and TIMESTAMP_RE.match(value), \
        f"not an RFC 3339 UTC timestamp with milliseconds: {value!r}"
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)


def assert_job_resource(job):
    assert isinstance(job, dict), job
    for key in JOB_FIELDS:
        assert key in job, f"job resource lacks {key!r}: {job!r}"
    assert isinstance(job["id"], str) and job["id"], job
    assert job["status"] in TERMINAL | {"queued", "running"}, job
    assert job["model"] in ("thread", "process"), job
    parse_ts(job["created_at"])
    if job["status"] in ("running",) or job["status"] in TERMINAL and job["started_at"]:
        parse_ts(job["started_at"])
    if job["status"] in TERMINAL:
        parse_ts(job["finished_at"])
        if job["status"] != "succeeded":
            assert isinstance(job["error"], dict) and isinstance(job["error"].get("code"), str) \
                and isinstance(job["error"].get("message"), str), job
    return job


# --- Prometheus text format ------------------------------------------------------------------

_SAMPLE_RE = re.compile(
    r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$")
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*(,|$)')


def _unescape(v):
    return v.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\")


def parse_metrics(text):
    """Parse Prometheus text exposition 0.0.4: (samples, types). Raises on malformed lines."""
    samples, types = [], {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                types[parts[2]] = parts[3].strip()
            continue
        m = _SAMPLE_RE.match(line)
        assert m, f"metrics line {lineno} is malformed: {line!r}"
        name, labelstr, value = m.group(1), m.group(2), m.group(3)
        labels = {}
        if labelstr:
            pos = 0
            for _ in range(len(labelstr) + 1):
                if pos >= len(labelstr):
                    break
                lm = _LABEL_RE.match(labelstr, pos)
                assert lm, f"metrics line {lineno} has malformed labels: {line!r}"
                labels[lm.group(1)] = _unescape(lm.group(2))
                pos = lm.end()
        samples.append((name, labels, float(value)))
    return samples, types


def metric_sum(samples, name, **labels):
    """Sum of the samples named ``name`` whose labels include ``labels``; None if none match."""
    vals = [v for n, l, v in samples if n == name and all(l.get(k) == x for k, x in labels.items())]
    return sum(vals) if vals else None


# --- the server under test -------------------------------------------------------------------

_LISTEN_TEXT_RE = re.compile(r"listening (?:on http://|.*\baddress=)(\d{1,3}(?:\.\d{1,3}){3}):(\d+)")
_ADDR_RE = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3}):(\d+)")


class Server:
    def __init__(self, binary, flags=(), env=None, diagnostics=True, log_format="json",
                 listen="127.0.0.1:0"):
        args = [binary]
        if listen is not None:
            args += ["--listen", listen]
        if diagnostics:
            args.append("--diagnostics")
        if log_format is not None:
            args += ["--log-format", log_format]
        args += [str(a) for a in flags]
        self.args = args
        self.env = clean_env(env)
        self.proc = None
        self.pid = None
        self.port = None
        self.base_url = None
        self.stderr_lines = []
        self.stdout_lines = []
        self.known_workers = set()  # identities of every worker pid seen, for teardown
        self._listening = threading.Event()
        self._readers = []
        self._cwd = None

    # lifecycle
    def start(self, listen_timeout=15.0, ready_timeout=15.0, wait_ready=True):
        self._cwd = tempfile.mkdtemp(prefix="switchyard-it-")
        self.proc = subprocess.Popen(
            self.args, cwd=self._cwd, env=self.env, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_child_setup)
        self.pid = self.proc.pid
        LIVE_SERVERS.append(self)
        for stream, sink, watch in ((self.proc.stderr, self.stderr_lines, True),
                                    (self.proc.stdout, self.stdout_lines, False)):
            t = threading.Thread(target=self._drain, args=(stream, sink, watch), daemon=True)
            t.start()
            self._readers.append(t)
        deadline = time.monotonic() + listen_timeout
        while not self._listening.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"switchyard did not log its listening address within {listen_timeout}s "
                    f"(exit code {self.proc.returncode}); args={self.args}\n{self.log_tail()}")
        self.base_url = f"http://{HOST}:{self.port}"
        if not wait_ready:
            return self
        deadline = time.monotonic() + ready_timeout
        status = None
        for _ in range(int(ready_timeout / 0.05) + 2):
            try:
                status = self.request("GET", "/readyz", timeout=2).status
            except OSError as e:
                status = repr(e)
            if status == 200 or time.monotonic() > deadline or self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if status != 200:
            self.kill()
            raise RuntimeError(f"/readyz never answered 200 (last: {status}); args={self.args}\n"
                               f"{self.log_tail()}")
        self.snapshot_workers()
        return self

    def _drain(self, stream, sink, watch):
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            sink.append(line)
            if watch and not self._listening.is_set():
                port = self._parse_listening(line)
                if port:
                    self.port = port
                    self._listening.set()
        stream.close()

    @staticmethod
    def _parse_listening(line):
        s = line.strip()
        if s.startswith("{"):
            try:
                obj = json.loads(s)
            except ValueError:
                obj = None
            if isinstance(obj, dict) and obj.get("msg") == "listening":
                m = _ADDR_RE.search(str(obj.get("address", "")))
                if m and m.group(1) == HOST:
                    return int(m.group(2))
                return None
        m = _LISTEN_TEXT_RE.search(line)
        if m and m.group(1) == HOST:
            return int(m.group(2))
        return None

    @property
    def cwd(self):
        """The server's working directory (its default ./data lives there); removed at kill()."""
        return self._cwd

    def log_tail(self, n=40):
        return ("--- stderr ---\n" + "\n".join(self.stderr_lines[-n:]) +
                "\n--- stdout ---\n" + "\n".join(self.stdout_lines[-n:]))

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def send_signal(self, sig):
        self.snapshot_workers()
        self.proc.send_signal(sig)

    def wait_exit(self, timeout):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def join_logs(self, timeout=5.0):
        for t in self._readers:
            t.join(timeout)

    def stop(self, timeout=20.0):
        """SIGTERM and wait; returns the exit code (None if it did not exit in time)."""
        if not self.alive():
            return self.proc.returncode
        self.send_signal(signal.SIGTERM)
        rc = self.wait_exit(timeout)
        if rc is not None:
            self.join_logs()
        return rc

    def kill(self):
        """Teardown: SIGKILL the server (by pid) and any worker of it that outlived it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.snapshot_workers()
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for ident in list(self.known_workers):
            if identity_state(ident) == "alive":
                try:
                    os.kill(ident[0], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.join_logs(2)
        if self in LIVE_SERVERS:
            LIVE_SERVERS.remove(self)
        if self._cwd:
            shutil.rmtree(self._cwd, ignore_errors=True)
            self._cwd = None

    # processes
    def worker_pids(self):
        pids = children_of(self.pid)
        for p in pids:
            ident = proc_identity(p)
            if ident:
                self.known_workers.add(ident)
        return pids

    def snapshot_workers(self):
        if self.alive():
            self.worker_pids()
        return set(self.known_workers)

    def live_worker_pids(self):
        """Children of the server that are not zombies."""
        return {p for p in self.worker_pids()
                if (proc_stat(p) or {}).get("state") not in (None, "Z", "X")}

    def thread_count(self):
        return thread_count(self.pid)

    # HTTP
    def request(self, method, path, body=None, **kw):
        return http_request(self.port, method, path, body, **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def submit(self, type_, input_=None, headers=None, timeout=30.0, **fields):
        body = {"type": type_}
        if input_ is not None:
            body["input"] = input_
        body.update({k: v for k, v in fields.items() if v is not None})
        return self.request("POST", "/v1/jobs", body, headers=headers, timeout=timeout)

    def submit_ok(self, type_, input_=None, **fields):
        r = self.submit(type_, input_, **fields)
        assert r.status == 202, f"submit {type_} {input_} {fields}: {r.status} {r.body!r}"
        assert r.headers.get_content_type() == "application/json", r.headers
        assert_job_resource(r.body)
        loc = r.headers.get("Location") or ""
        assert loc.endswith("/v1/jobs/" + r.body["id"]), f"Location {loc!r} for {r.body['id']}"
        return r.body

    def job(self, job_id):
        r = self.get(f"/v1/jobs/{job_id}")
        assert r.status == 200, f"GET job {job_id}: {r.status} {r.body!r}"
        return assert_job_resource(r.body)

    def wait_job(self, job_id, timeout=15.0):
        """Long-poll (?wait=) until the job is terminal; returns it. Fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        job = None
        for _ in range(int(timeout / 0.02) + 2):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            w = max(1, min(5, int(remaining)))
            r = self.get(f"/v1/jobs/{job_id}?wait={w}", timeout=w + 10)
            assert r.status == 200, f"GET job {job_id}?wait={w}: {r.status} {r.body!r}"
            job = r.body
            if job.get("status") in TERMINAL:
                return assert_job_resource(job)
            time.sleep(0.02)
        raise AssertionError(f"job {job_id} not terminal after {timeout}s: {job!r}")

    def wait_status(self, job_id, statuses, timeout=10.0):
        statuses = {statuses} if isinstance(statuses, str) else set(statuses)
        holder = {}

        def check():
            holder["job"] = self.job(job_id)
            return holder["job"]["status"] in statuses

        wait_until(check, timeout, message=f"job {job_id} status in {sorted(statuses)} "
                                           f"(last {holder.get('job', {}).get('status')})")
        return holder["job"]

    def stats(self):
        r = self.get("/v1/stats")
        assert r.status == 200, (r.status, r.body)
        return r.body

    def submitted_total(self):
        m = self.stats()["models"]
        return m["thread"]["submitted"] + m["process"]["submitted"]

    def metrics(self):
        r = self.get("/metrics")
        assert r.status == 200, (r.status, r.body)
        return parse_metrics(r.body)

    def wait_pool(self, workers, timeout=10.0):
        """Wait until /v1/stats reports ``workers`` process workers and that many live children."""
        def check():
            return (self.stats()["models"]["process"]["workers"] == workers
                    and len(self.live_worker_pids()) == workers)
        wait_until(check, timeout, interval=0.05,
                   message=f"process pool back to {workers} workers")

    def wait_idle(self, timeout=15.0):
        """Wait until nothing is queued or running on either model."""
        def check():
            m = self.stats()["models"]
            return all(m[k]["queued"] == 0 and m[k]["running"] == 0 for k in ("thread", "process"))
        wait_until(check, timeout, interval=0.05, message="server idle")


def read_log(path, in_progress=False):
    """append_log's file as (event, tag, pid, ns) tuples; no lines while the file does not exist yet
    (a job is `running` from the moment it is handed to a worker, before it opens the file). Fails
    on a line that is not whole, except, with `in_progress` (a poll while jobs still append), a
    last line without its newline: the kernel copies an O_APPEND write into the file page by page,
    so a reader can see the first part of a line that crosses a page boundary."""
    lines = []
    try:
        f = open(path)
    except FileNotFoundError:
        return lines
    with f:
        raws = f.readlines()
    if in_progress and raws and not raws[-1].endswith("\n"):
        raws.pop()
    for raw in raws:
        assert raw.endswith("\n"), f"line without its newline: {raw!r}"
        fields = raw.split()
        assert len(fields) == 4 and fields[0] in ("start", "end", "stop"), f"malformed line {raw!r}"
        lines.append((fields[0], fields[1], int(fields[2]), int(fields[3])))
    return lines


def list_all(server, **filters):
    """Every job the server lists (with `filters` as query parameters), by id, following
    next_cursor; fails on a job listed twice."""
    jobs, cursor = {}, None
    for _ in range(100):
        query = dict(filters, limit=1000, **({"cursor": cursor} if cursor else {}))
        r = server.get("/v1/jobs?" + urllib.parse.urlencode(query), timeout=60)
        assert r.status == 200, (r.status, r.body)
        for job in r.body["jobs"]:
            assert job["id"] not in jobs, f"job {job['id']} listed twice"
            jobs[job["id"]] = job
        cursor = r.body["next_cursor"]
        if not cursor:
            return jobs
    raise AssertionError("the listing never ended")
