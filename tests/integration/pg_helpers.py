"""A real PostgreSQL server for tests: Debian's postgresql package, initdb into a temporary
directory, listening on a free loopback port only, stopped and removed afterwards.

As root (CI), the server runs as the `postgres` user that the package creates: PostgreSQL refuses
to run as root.
"""
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time


def pg_bin_dir():
    """The newest /usr/lib/postgresql/<version>/bin, or None."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    return dirs[-1] if dirs else None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TempPostgres:
    """``with TempPostgres() as pg: pg.url`` — a throw-away server with a `switchyard` superuser.

    ``durable=True`` keeps PostgreSQL's own durability settings (fsync, synchronous_commit and
    full_page_writes on, as a real server runs), for benchmarks; tests leave them off."""

    def __init__(self, durable=False):
        self.bin = pg_bin_dir()
        if self.bin is None:
            raise RuntimeError("PostgreSQL server binaries not found (Debian package postgresql)")
        self.root = None
        self.proc = None
        self.port = None
        self.log_path = None
        self.durable = durable

    def _as_owner(self, argv):
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--"] + argv
        return argv

    def start(self, timeout=30):
        self.root = tempfile.mkdtemp(prefix="switchyard-pg-")
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        data = os.path.join(self.root, "data")
        subprocess.run(self._as_owner([os.path.join(self.bin, "initdb"), "-D", data, "-A", "trust", "-U",
                                       "switchyard", "-E", "UTF8", "--no-sync"]),
                       check=True, capture_output=True, timeout=120)
        self.port = _free_port()
        self.log_path = os.path.join(self.root, "server.log")
        log = open(self.log_path, "wb")
        # Durability settings off unless asked: a throw-away test server, never a target for real data.
        durability = "on" if self.durable else "off"
        self.proc = subprocess.Popen(
            self._as_owner([os.path.join(self.bin, "postgres"), "-D", data, "-p", str(self.port),
                            "-k", self.root, "-c", "listen_addresses=127.0.0.1", "-c", f"fsync={durability}",
                            "-c", f"synchronous_commit={durability}", "-c", f"full_page_writes={durability}",
                            "-c", "max_connections=200"]),
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = subprocess.run([os.path.join(self.bin, "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port),
                                    "-U", "switchyard", "-d", "postgres"], capture_output=True)
            if ready.returncode == 0:
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("PostgreSQL did not start")

    @property
    def url(self):
        return f"postgresql://switchyard@127.0.0.1:{self.port}/postgres"

    def psql(self, sql):
        """Runs SQL with psql; returns the rows as lists of text values."""
        r = subprocess.run([os.path.join(self.bin, "psql"), self.url, "-X", "-A", "-t", "-F", "\t",
                            "-v", "ON_ERROR_STOP=1", "-c", sql],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        return [line.split("\t") for line in r.stdout.splitlines() if line]

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # smart shutdown is enough: the tests' clients are gone
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        if self.root:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
