"""Every error status of API.md, always as application/problem+json, never a 5xx."""

import json
import socket

import pytest

import sy_helpers as sy

BODY_LIMIT = 65536
UNKNOWN_ID = "0193f1c2-7a4e-7d3a-9a43-5f0d7e1b2c3d"


@pytest.fixture(scope="module")
def es(module_server_factory):
    return module_server_factory("--process-workers", "1", "--max-body-bytes", str(BODY_LIMIT))


@pytest.fixture(scope="module")
def done_job(es):
    job = es.submit_ok("sleep", {"ms": 1})
    return es.wait_job(job["id"])


# --- 400 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    b'{"type": "sleep", "input": {"ms": 1}',   # truncated
    b'{"type": "sleep",}',                      # trailing comma
    b"nope",
    b"",
    b'{"type": "sleep", "input": {"ms": NaN}}',
    b'{"type": "sle\xffep"}',                    # invalid UTF-8
], ids=["truncated", "trailing-comma", "bare-word", "empty", "nan", "bad-utf8"])
def test_malformed_json_is_400(es, raw):
    before = es.submitted_total()
    sy.assert_problem(es.request("POST", "/v1/jobs", raw=raw), 400, "invalid_json")
    sy.assert_problem(es.request("POST", "/v1/jobs:batch", raw=raw), 400, "invalid_json")
    assert es.submitted_total() == before


@pytest.mark.parametrize("query", [
    "limit=0", "limit=1001", "limit=abc", "limit=-1", "limit=", "cursor=%21%21not-a-cursor%21%21",
])
def test_bad_list_query_is_400(es, query):
    sy.assert_problem(es.get(f"/v1/jobs?{query}"), 400, "invalid_query")


def test_bad_wait_query_is_400(es, done_job):
    sy.assert_problem(es.get(f"/v1/jobs/{done_job['id']}?wait=abc"), 400, "invalid_query")


def test_garbage_request_line_is_400_and_server_survives(es):
    status, _, _ = sy.raw_exchange(es.port, b"BLAH\r\n\r\n", 1)[0]
    assert status == 400
    assert es.get("/healthz").status == 200


# --- 404 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,path", [
    ("GET", f"/v1/jobs/{UNKNOWN_ID}"),
    ("DELETE", f"/v1/jobs/{UNKNOWN_ID}"),
    ("GET", "/v1/nope"),
    ("GET", "/v2/jobs"),
    ("GET", "/v1/jobsx"),
    ("POST", "/v1/nope"),
    ("GET", "/"),
])
def test_unknown_id_or_path_is_404(es, method, path):
    sy.assert_problem(es.request(method, path), 404, "not_found")


# --- 405 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("method,path,allowed", [
    ("PUT", "/v1/jobs", {"GET", "POST"}),
    ("DELETE", "/v1/jobs", {"GET", "POST"}),
    ("PATCH", "/v1/jobs/{id}", {"GET", "DELETE"}),
    ("POST", "/v1/jobs/{id}", {"GET", "DELETE"}),
    ("GET", "/v1/jobs:batch", {"POST"}),
    ("POST", "/v1/stats", {"GET"}),
    ("DELETE", "/v1/job-types", {"GET"}),
    ("POST", "/healthz", {"GET"}),
    ("PUT", "/metrics", {"GET"}),
])
def test_wrong_method_is_405_with_allow(es, done_job, method, path, allowed):
    path = path.replace("{id}", done_job["id"])
    r = es.request(method, path, {} if method in ("PUT", "PATCH", "POST") else None)
    sy.assert_problem(r, 405)
    allow = {m.strip().upper() for m in (r.headers.get("Allow") or "").split(",") if m.strip()}
    assert allowed <= allow, f"Allow {r.headers.get('Allow')!r} for {method} {path}"
    assert method not in allow


# --- 409 -------------------------------------------------------------------------------------

def test_cancel_terminal_job_is_409_and_job_unchanged(es, done_job):
    sy.assert_problem(es.request("DELETE", f"/v1/jobs/{done_job['id']}"), 409, "conflict")
    assert es.job(done_job["id"])["status"] == "succeeded"
    assert es.job(done_job["id"])["finished_at"] == done_job["finished_at"]


# --- 413 -------------------------------------------------------------------------------------

def _padded_job(size):
    base = json.dumps({"type": "sleep", "input": {"ms": 1}})
    return (base[:-1] + " " * (size - len(base)) + "}").encode()


def test_body_at_limit_is_accepted(es):
    body = _padded_job(BODY_LIMIT)
    assert len(body) == BODY_LIMIT
    r = es.request("POST", "/v1/jobs", raw=body)
    assert r.status == 202, (r.status, r.body)
    es.wait_job(r.body["id"])


def test_body_over_limit_is_413(es):
    before = es.submitted_total()
    body = _padded_job(BODY_LIMIT + 1)
    req = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n" % len(body)) + body
    status, headers, payload = sy.raw_exchange(es.port, req, 1)[0]
    assert status == 413, payload
    sy.assert_problem(sy.Response(status, headers, json.loads(payload)), 413)
    assert es.submitted_total() == before


def test_declared_huge_content_length_is_413_without_sending_body(es):
    req = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: 1000000000\r\n\r\n")
    status, headers, payload = sy.raw_exchange(es.port, req, 1, timeout=5)[0]
    assert status == 413, payload
    assert headers.get("content-type", "").startswith("application/problem+json")


def test_chunked_body_over_limit_is_413(es):
    chunk = b"x" * 8192
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(10)) + b"0\r\n\r\n"
    req = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n") + body
    status, _, payload = sy.raw_exchange(es.port, req, 1)[0]
    assert status == 413, payload


# --- 415 -------------------------------------------------------------------------------------

@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded",
                                   "application/xml"])
def test_wrong_content_type_is_415(es, ctype):
    before = es.submitted_total()
    raw = json.dumps({"type": "sleep", "input": {"ms": 1}})
    sy.assert_problem(es.request("POST", "/v1/jobs", raw=raw, content_type=ctype), 415)
    batch = json.dumps({"jobs": [{"type": "sleep", "input": {"ms": 1}}]})
    sy.assert_problem(es.request("POST", "/v1/jobs:batch", raw=batch, content_type=ctype), 415)
    assert es.submitted_total() == before


def test_json_with_charset_is_accepted(es):
    raw = json.dumps({"type": "sleep", "input": {"ms": 1}})
    r = es.request("POST", "/v1/jobs", raw=raw, content_type="application/json; charset=utf-8")
    assert r.status == 202, r.body
    es.wait_job(r.body["id"])


# --- 422 -------------------------------------------------------------------------------------

SLEEP = {"type": "sleep", "input": {"ms": 10}}

VALIDATION_CASES = [
    ({"type": "no-such-type"}, "/type", "unknown_job_type"),
    ({"type": "no-such-type", "input": {"ms": 1}}, "/type", "unknown_job_type"),
    ({}, "/type", "validation_failed"),
    ({"type": 5}, "/type", "validation_failed"),
    ({"type": None}, "/type", "validation_failed"),
    ({"type": "sleep", "input": {"ms": "abc"}}, "/input/ms", "validation_failed"),
    ({"type": "sleep", "input": {"ms": -1}}, "/input/ms", "validation_failed"),
    ({"type": "sleep", "input": {"ms": 1.5e300}}, "/input/ms", "validation_failed"),
    ({"type": "sleep", "input": {}}, "/input/ms", "validation_failed"),
    ({"type": "sleep", "input": [1]}, "/input", "validation_failed"),
    ({"type": "sleep", "input": "x"}, "/input", "validation_failed"),
    (dict(SLEEP, model="gpu"), "/model", "validation_failed"),
    (dict(SLEEP, model=1), "/model", "validation_failed"),
    (dict(SLEEP, priority=1001), "/priority", "validation_failed"),
    (dict(SLEEP, priority=-1001), "/priority", "validation_failed"),
    (dict(SLEEP, priority=1.5), "/priority", "validation_failed"),
    (dict(SLEEP, priority="high"), "/priority", "validation_failed"),
    (dict(SLEEP, priority=True), "/priority", "validation_failed"),
    (dict(SLEEP, timeout_ms=0), "/timeout_ms", "validation_failed"),
    (dict(SLEEP, timeout_ms=-5), "/timeout_ms", "validation_failed"),
    (dict(SLEEP, timeout_ms="soon"), "/timeout_ms", "validation_failed"),
    (dict(SLEEP, bogus=1), "/bogus", "validation_failed"),
    ({"type": "primes", "input": {"n": "x"}}, "/input/n", "validation_failed"),
    ({"type": "primes", "input": {}}, "/input/n", "validation_failed"),
    ({"type": "hash", "input": {}}, "/input/data", "validation_failed"),
    ({"type": "hash", "input": {"data": "abc", "algorithm": "md5"}}, "/input/algorithm",
     "validation_failed"),
    ({"type": "hash", "input": {"data": "abc", "encoding": "hex"}}, "/input/encoding",
     "validation_failed"),
    ({"type": "burn", "input": {"ms": "x"}}, "/input/ms", "validation_failed"),
    ({"type": "http.request", "input": {}}, "/input/url", "validation_failed"),
    ({"type": "crash", "input": {"signal": "SEGV"}, "model": "thread"}, "/model",
     "validation_failed"),
]


@pytest.mark.parametrize("body,path,code", VALIDATION_CASES,
                         ids=[f"{i}:{c[1]}" for i, c in enumerate(VALIDATION_CASES)])
def test_invalid_job_is_422_with_path(es, body, path, code):
    before = es.submitted_total()
    sy.assert_validation(es.request("POST", "/v1/jobs", body), path, code)
    assert es.submitted_total() == before, "a rejected job was counted as submitted"


@pytest.mark.parametrize("body", [[], "sleep", 42, None, [SLEEP]], ids=repr)
def test_non_object_json_is_422(es, body):
    sy.assert_problem(es.request("POST", "/v1/jobs", raw=json.dumps(body)), 422,
                      "validation_failed")


# --- 431 -------------------------------------------------------------------------------------

def test_oversized_headers_are_431(es):
    req = (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n")
    status, headers, payload = sy.raw_exchange(es.port, req, 1)[0]
    assert status == 431, payload[:200]
    assert headers.get("content-type", "").startswith("application/problem+json"), headers
    assert es.get("/healthz").status == 200


# --- never a 5xx -----------------------------------------------------------------------------

NASTY = [
    b"[" * 30000 + b"]" * 30000,
    b'{"type":"sleep","input":' + b'{"a":' * 10000 + b"1" + b"}" * 10000 + b"}",
    b'{"type":"sleep","input":{"ms":1e400}}',
    b'{"type":"sleep","input":{"ms":99999999999999999999999999}}',
    b'{"type":"sleep","input":{"ms":-0}}',
    b'{"type":"sleep","type":"primes","input":{"n":10}}',
    b'{"type":"\\ud800","input":{}}',
    b'{"type":"sleep\\u0000","input":{"ms":1}}',
    b'{"type":"hash","input":{"data":"abc","iterations":-1}}',
    b'{"type":"hash","input":{"data":"abc","iterations":1e12}}',
    b'{"type":"hash","input":{"data":"!!!","encoding":"base64"}}',
    b'{"type":"primes","input":{"n":-5}}',
    b'{"type":"primes","input":{"n":1e30}}',
    b'{"type":"http.request","input":{"url":"ftp://x"}}',
    b'{"type":"http.request","input":{"url":""}}',
    b'{"type":"sleep","input":{"ms":1},"timeout_ms":1e30}',
    b'{"jobs":[]}',
    b"\xef\xbb\xbf{}",
    b"{}" * 1000,
    b'"' + b"\\" * 5000 + b'"',
]


def test_hostile_bodies_never_5xx(es):
    for raw in NASTY:
        for path in ("/v1/jobs", "/v1/jobs:batch"):
            r = es.request("POST", path, raw=raw, timeout=10)
            assert r.status < 500, (raw[:80], path, r.status, r.body)
            if r.status >= 400:
                sy.assert_problem(r, r.status)
            elif r.status == 202:  # tidy up anything that was legitimately accepted
                for job in (r.body.get("jobs") or [r.body]):
                    es.request("DELETE", f"/v1/jobs/{job['id']}")
    assert es.alive(), es.log_tail()
    assert es.get("/healthz").status == 200


def test_hostile_paths_and_queries_never_5xx(es):
    paths = ["/v1/jobs/" + "a" * 4000, "/v1/jobs/%00", "/v1/jobs/..%2F..%2Fetc%2Fpasswd",
             "/v1/jobs?limit=99999999999999999999", "/v1/jobs?status=%ff", "/v1/jobs?&&&=&=",
             "/v1/jobs/" + UNKNOWN_ID + "?wait=99999999999999999999", "/%2e%2e/", "//v1//jobs"]
    for p in paths:
        r = es.get(p, timeout=10)
        assert r.status < 500, (p, r.status, r.body)
    assert es.get("/healthz").status == 200


def test_half_request_then_close_does_not_hurt(es):
    for chunk in (b"POST /v1/jobs HTTP/1.1\r\nContent-Length: 100\r\n\r\n{\"ty",
                  b"GET /v1/jo"):
        with socket.create_connection((sy.HOST, es.port), timeout=5) as s:
            s.sendall(chunk)
    assert es.get("/healthz").status == 200
