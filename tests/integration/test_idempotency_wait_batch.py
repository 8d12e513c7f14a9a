"""Idempotency-Key, Prefer: wait / ?wait= long-polling, and POST /v1/jobs:batch."""

import json
import time
import uuid

import sy_helpers as sy


def _post(server, body, key=None, prefer=None, timeout=30.0):
    headers = {}
    if key is not None:
        headers["Idempotency-Key"] = key
    if prefer is not None:
        headers["Prefer"] = prefer
    return server.request("POST", "/v1/jobs", body, headers=headers, timeout=timeout)


# --- Idempotency-Key -------------------------------------------------------------------------

def test_idempotent_repeat_returns_original_job(server):
    key = f"it-{uuid.uuid4()}"
    body = {"type": "sleep", "input": {"ms": 400}}
    before = server.stats()["models"]["thread"]["submitted"]

    first = _post(server, body, key)
    assert first.status == 202, first.body
    jid = first.body["id"]

    again = _post(server, body, key)
    assert again.status == 202, "a repeat while the job is not terminal must answer 202"
    assert again.body["id"] == jid
    assert again.body["status"] in ("queued", "running")

    server.wait_job(jid)
    done = _post(server, body, key)
    assert done.status == 200, "a repeat of a terminal job must answer 200"
    assert done.body["id"] == jid and done.body["status"] == "succeeded", done.body

    assert server.stats()["models"]["thread"]["submitted"] == before + 1, "repeat created a job"
    listed = server.get("/v1/jobs?type=sleep&limit=1000").body["jobs"]
    assert sum(1 for j in listed if j["id"] == jid) == 1


def test_idempotency_key_with_different_body_is_409(server):
    key = f"it-{uuid.uuid4()}"
    first = _post(server, {"type": "sleep", "input": {"ms": 1}}, key)
    assert first.status == 202
    before = server.submitted_total()
    r = _post(server, {"type": "sleep", "input": {"ms": 2}}, key)
    sy.assert_problem(r, 409, "conflict")
    r = _post(server, {"type": "primes", "input": {"n": 10}}, key)
    sy.assert_problem(r, 409, "conflict")
    assert server.submitted_total() == before
    server.wait_job(first.body["id"])


def test_different_keys_make_different_jobs(server):
    body = {"type": "sleep", "input": {"ms": 1}}
    a = _post(server, body, f"it-{uuid.uuid4()}")
    b = _post(server, body, f"it-{uuid.uuid4()}")
    assert a.status == b.status == 202 and a.body["id"] != b.body["id"]
    # and without a key, identical bodies are distinct jobs
    c, d = _post(server, body), _post(server, body)
    assert c.body["id"] != d.body["id"]
    for r in (a, b, c, d):
        server.wait_job(r.body["id"])


def test_invalid_idempotency_key_is_rejected(server):
    before = server.submitted_total()
    body = {"type": "sleep", "input": {"ms": 1}}
    for key in ("k" * 256, "has space", "caf\u00e9".encode().decode("latin-1")):
        r = _post(server, body, key)
        assert r.status in (400, 422), (key, r.status, r.body)
        sy.assert_problem(r, r.status)
    assert server.submitted_total() == before


# --- Prefer: wait / ?wait= -------------------------------------------------------------------

def test_prefer_wait_returns_terminal_job_with_200(server):
    t0 = time.monotonic()
    r = _post(server, {"type": "sleep", "input": {"ms": 100}}, prefer="wait=5")
    elapsed = time.monotonic() - t0
    assert r.status == 200, (r.status, r.body)
    assert r.body["status"] == "succeeded" and r.body["result"]["slept_ms"] >= 90, r.body
    assert 0.09 <= elapsed < 3.0, elapsed


def test_prefer_wait_on_cpu_job(server):
    r = _post(server, {"type": "primes", "input": {"n": 1000000}}, prefer="wait=10")
    assert r.status == 200, (r.status, r.body)
    assert r.body["result"] == {"count": 78498}


def test_prefer_wait_times_out_with_202(server):
    t0 = time.monotonic()
    r = _post(server, {"type": "sleep", "input": {"ms": 3000}}, prefer="wait=1")
    elapsed = time.monotonic() - t0
    assert r.status == 202, (r.status, r.body)
    assert r.body["status"] in ("queued", "running"), r.body
    assert 0.9 <= elapsed < 2.5, f"Prefer: wait=1 answered after {elapsed:.2f}s"
    assert (r.headers.get("Location") or "").endswith("/v1/jobs/" + r.body["id"])
    server.request("DELETE", f"/v1/jobs/{r.body['id']}")


def test_get_wait_returns_when_terminal(server):
    job = server.submit_ok("sleep", {"ms": 500})
    t0 = time.monotonic()
    r = server.get(f"/v1/jobs/{job['id']}?wait=5", timeout=15)
    elapsed = time.monotonic() - t0
    assert r.status == 200 and r.body["status"] == "succeeded", r.body
    assert 0.3 <= elapsed < 2.5, elapsed


def test_get_wait_returns_current_state_after_n_seconds(server):
    job = server.submit_ok("sleep", {"ms": 3000})
    t0 = time.monotonic()
    r = server.get(f"/v1/jobs/{job['id']}?wait=1", timeout=15)
    elapsed = time.monotonic() - t0
    assert r.status == 200 and r.body["status"] == "running", r.body
    assert 0.9 <= elapsed < 2.5, elapsed
    # a terminal job answers at once
    server.request("DELETE", f"/v1/jobs/{job['id']}")
    server.wait_job(job["id"])
    t0 = time.monotonic()
    r = server.get(f"/v1/jobs/{job['id']}?wait=10", timeout=15)
    assert r.status == 200 and r.body["status"] == "cancelled"
    assert time.monotonic() - t0 < 0.5


def test_wait_above_cap_is_capped_not_an_error(server_factory):
    s = server_factory("--process-workers", "1", "--max-wait-s", "1")
    t0 = time.monotonic()
    r = _post(s, {"type": "sleep", "input": {"ms": 5000}}, prefer="wait=30")
    elapsed = time.monotonic() - t0
    assert r.status == 202, (r.status, r.body)
    assert 0.9 <= elapsed < 3.0, f"Prefer: wait=30 with a 1 s cap answered after {elapsed:.2f}s"

    t0 = time.monotonic()
    r2 = s.get(f"/v1/jobs/{r.body['id']}?wait=100000", timeout=20)
    elapsed = time.monotonic() - t0
    assert r2.status == 200 and r2.body["status"] == "running", r2.body
    assert 0.9 <= elapsed < 3.0, f"?wait=100000 with a 1 s cap answered after {elapsed:.2f}s"


# --- batch -----------------------------------------------------------------------------------

def _batch(server, items, timeout=30.0):
    return server.request("POST", "/v1/jobs:batch", {"jobs": items}, timeout=timeout)


def test_batch_accepts_in_order(server):
    items = [
        {"type": "sleep", "input": {"ms": 20}},
        {"type": "primes", "input": {"n": 100}},
        {"type": "hash", "input": {"data": "abc"}},
        {"type": "burn", "input": {"ms": 10}, "model": "thread", "priority": 5},
        {"type": "sleep", "input": {"ms": 1}, "timeout_ms": 5000},
    ]
    r = _batch(server, items)
    assert r.status == 202, (r.status, r.body)
    assert r.headers.get_content_type() == "application/json"
    jobs = r.body["jobs"]
    assert len(jobs) == len(items)
    assert len({j["id"] for j in jobs}) == len(items)
    for item, job in zip(items, jobs):
        sy.assert_job_resource(job)
        assert job["type"] == item["type"] and job["input"] == item["input"], (item, job)
    assert [j["model"] for j in jobs] == ["thread", "process", "process", "thread", "thread"]
    assert jobs[3]["priority"] == 5 and jobs[4]["timeout_ms"] == 5000
    results = [server.wait_job(j["id"]) for j in jobs]
    assert all(f["status"] == "succeeded" for f in results), results
    assert results[1]["result"] == {"count": 25}


def test_batch_is_all_or_nothing(server):
    before = server.submitted_total()
    items = [{"type": "sleep", "input": {"ms": 1}} for _ in range(5)]
    items[3] = {"type": "no-such-type", "input": {}}
    body = sy.assert_problem(_batch(server, items), 422)
    assert "/jobs/3/type" in sy.error_paths(body), body

    items = [{"type": "sleep", "input": {"ms": 1}} for _ in range(5)]
    items[1] = {"type": "sleep", "input": {"ms": "soon"}}
    body = sy.assert_problem(_batch(server, items), 422)
    assert "/jobs/1/input/ms" in sy.error_paths(body), body

    items = [{"type": "sleep", "input": {"ms": 1}} for _ in range(3)]
    items[2]["priority"] = 5000
    body = sy.assert_problem(_batch(server, items), 422)
    assert "/jobs/2/priority" in sy.error_paths(body), body

    assert server.submitted_total() == before, "a rejected batch created jobs"


def test_batch_size_limits(server):
    before = server.submitted_total()
    for n in (0, 1001):
        items = [{"type": "sleep", "input": {"ms": 1}} for _ in range(n)]
        body = sy.assert_problem(_batch(server, items), 422, "validation_failed")
        assert any(p.startswith("/jobs") for p in sy.error_paths(body)), body
    for bad in ({}, {"jobs": {}}, {"jobs": "x"}, {"jobs": [1]}, {"jobs": [], "x": 1}):
        r = server.request("POST", "/v1/jobs:batch", bad)
        sy.assert_problem(r, 422)
    assert server.submitted_total() == before


def test_batch_of_exactly_1000_is_accepted(server):
    items = [{"type": "sleep", "input": {"ms": 1}} for _ in range(1000)]
    r = _batch(server, items)
    assert r.status == 202, (r.status, str(r.body)[:300])
    assert len(r.body["jobs"]) == 1000
    assert len({j["id"] for j in r.body["jobs"]}) == 1000
    server.wait_job(r.body["jobs"][-1]["id"])
    server.wait_idle()
