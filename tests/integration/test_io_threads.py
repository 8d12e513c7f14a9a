"""The io threads: each drives its own io_context, connections stay on the thread that took them,
and blocking jobs sent to the thread model run on threads of their own."""

import http.client
import json
import os
import time

import sy_helpers as sy


def _thread_names(pid):
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:
            continue
    return sorted(names)


def _get(conn, path):
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, r.read()


def test_threads_are_fixed_and_named(server_factory):
    s = server_factory("--io-threads", "3", "--process-workers", "1")
    names = _thread_names(s.pid)
    assert names.count("switchyard-io-1") == 1 and names.count("switchyard-io-2") == 1, names
    assert names.count("switchyard-blk") == 2, names  # --io-threads - 1 blocking slots
    assert names.count("switchyard-pool") == 1, names
    before = s.thread_count()
    s.submit_ok("burn", {"ms": 50}, model="thread")
    for _ in range(200):
        s.submit_ok("sleep", {"ms": 200})
    assert s.thread_count() == before
    s.wait_idle()
    assert s.thread_count() == before


def test_open_connections_are_answered_while_a_blocking_job_runs_on_the_thread_model(server_factory):
    # The connections are opened on an idle server, so they all go to the first io thread, the
    # one that then submits the blocking job: it must not run there.
    s = server_factory("--io-threads", "2", "--process-workers", "1")
    conns = [http.client.HTTPConnection(sy.HOST, s.port, timeout=10) for _ in range(6)]
    try:
        for conn in conns:
            assert _get(conn, "/healthz")[0] == 200
        submit = conns[0]
        body = json.dumps({"type": "burn", "input": {"ms": 1500}, "model": "thread"})
        submit.request("POST", "/v1/jobs", body=body, headers={"Content-Type": "application/json"})
        r = submit.getresponse()
        job = json.loads(r.read())
        assert r.status == 202, job
        sy.wait_until(lambda: s.job(job["id"])["status"] == "running", 5, message="burn running")
        for conn in conns:
            t0 = time.monotonic()
            assert _get(conn, "/healthz")[0] == 200
            assert time.monotonic() - t0 < 0.5
        # A long-poll on one of them ends with the job, measured by its own cpu time.
        status, data = _get(conns[1], f"/v1/jobs/{job['id']}?wait=10")
        done = json.loads(data)
        assert status == 200 and done["status"] == "succeeded", done
        assert done["cpu_ms"] >= 1000, done
    finally:
        for conn in conns:
            conn.close()

