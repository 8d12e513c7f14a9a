"""Fixtures for the Switchyard integration tests (run against the real binary).

Binary: $SWITCHYARD_BIN, default <repo>/build/dev/server/switchyard. Without it every test
is skipped with a message saying where it was looked for.

- ``server_factory`` (function scope) / ``module_server_factory`` (module scope): call with extra
  flags -> a started ``sy_helpers.Server`` (always ``--listen 127.0.0.1:0``, ``--diagnostics`` and
  ``--log-format json`` unless told otherwise). Every server is killed on teardown, together with
  any worker process that outlived it.
- ``server``: a module-scoped shared server (``--process-workers 2``) for cheap tests that leave
  no lasting state behind.
"""

import faulthandler
import os

import pytest

import sy_helpers as sy

PER_TEST_WATCHDOG_S = 120  # hard stop for a hung test (the servers die with us: PDEATHSIG)


@pytest.fixture(scope="session")
def switchyard_bin():
    path = sy.switchyard_bin()
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.skip(f"switchyard binary not found at {path} (build it or set SWITCHYARD_BIN)")
    return path


class ServerFactory:
    def __init__(self, binary):
        self.binary = binary
        self.servers = []

    def __call__(self, *flags, env=None, diagnostics=True, log_format="json",
                 listen="127.0.0.1:0", wait_ready=True):
        s = sy.Server(self.binary, flags, env=env, diagnostics=diagnostics,
                      log_format=log_format, listen=listen)
        self.servers.append(s)
        s.start(wait_ready=wait_ready)
        return s

    def close(self):
        for s in reversed(self.servers):
            s.kill()


@pytest.fixture
def server_factory(switchyard_bin):
    factory = ServerFactory(switchyard_bin)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def module_server_factory(switchyard_bin):
    factory = ServerFactory(switchyard_bin)
    yield factory
    factory.close()


@pytest.fixture(scope="module")
def server(module_server_factory):
    return module_server_factory("--process-workers", "2")


@pytest.fixture(autouse=True)
def _watchdog():
    faulthandler.dump_traceback_later(PER_TEST_WATCHDOG_S, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and sy.LIVE_SERVERS:
        for s in list(sy.LIVE_SERVERS):
            rep.sections.append((f"switchyard pid {s.pid} port {s.port} logs", s.log_tail(30)))
