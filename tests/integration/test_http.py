"""HTTP/1.1 transport behaviour: keep-alive, pipelining, connection handling, admission (429)."""

import http.client
import json
import socket
from concurrent.futures import ThreadPoolExecutor

import sy_helpers as sy


def test_keep_alive_serves_many_requests_on_one_connection(server):
    conn = http.client.HTTPConnection(sy.HOST, server.port, timeout=10)
    try:
        conn.connect()
        sock = conn.sock
        job_id = None
        plan = [
            ("GET", "/healthz", None, 200),
            ("GET", "/v1/stats", None, 200),
            ("POST", "/v1/jobs", {"type": "sleep", "input": {"ms": 1}}, 202),
            ("GET", "/v1/jobs/{id}?wait=5", None, 200),
            ("GET", "/v1/nope", None, 404),  # an error does not close the connection
            ("POST", "/v1/jobs", {"type": "nope"}, 422),
            ("GET", "/v1/job-types", None, 200),
            ("GET", "/readyz", None, 200),
        ]
        for method, path, body, want in plan:
            path = path.replace("{id}", job_id or "")
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if data else {}
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
            payload = r.read()
            assert r.status == want, (method, path, r.status, payload[:200])
            assert (r.getheader("Connection") or "").lower() != "close", (method, path)
            assert conn.sock is sock, f"the server closed the connection after {method} {path}"
            if method == "POST" and want == 202:
                job_id = json.loads(payload)["id"]
    finally:
        conn.close()


def _pipeline(port, requests, timeout=10):
    data = b"".join(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % p.encode() for p in requests)
    return sy.raw_exchange(port, data, len(requests), timeout=timeout)


def test_pipelining_two_requests_in_one_write(server):
    responses = _pipeline(server.port, ["/healthz", "/healthz"])
    assert [s for s, _, _ in responses] == [200, 200]


def test_pipelined_responses_come_back_in_order(server):
    responses = _pipeline(server.port, ["/healthz", "/v1/nope", "/openapi.yaml", "/v1/stats"])
    assert [s for s, _, _ in responses] == [200, 404, 200, 200]
    assert responses[1][1]["content-type"].startswith("application/problem+json")
    assert responses[2][2].startswith(b"openapi:")
    assert "models" in json.loads(responses[3][2])


def test_http_1_0_and_connection_close(server):
    for req in (b"GET /healthz HTTP/1.0\r\n\r\n",
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"):
        with socket.create_connection((sy.HOST, server.port), timeout=5) as s:
            s.sendall(req)
            f = s.makefile("rb")
            status, _, _ = sy.read_raw_response(f)
            assert status == 200
            assert f.read() == b"", "server did not close the connection"  # EOF within timeout


def test_many_concurrent_connections(server):
    def hit(i):
        return server.get("/healthz" if i % 2 else "/v1/stats", timeout=10).status

    with ThreadPoolExecutor(max_workers=64) as pool:
        statuses = list(pool.map(hit, range(256)))
    assert statuses == [200] * 256


def test_queue_full_is_429_with_retry_after(server_factory):
    s = server_factory("--process-workers", "1", "--thread-concurrency", "1",
                       "--queue-limit", "2")
    for type_, long_input, short_input in (("burn", {"ms": 10000}, {"ms": 50}),
                                           ("sleep", {"ms": 10000}, {"ms": 50})):
        running = s.submit_ok(type_, long_input)
        s.wait_status(running["id"], "running")
        queued = [s.submit_ok(type_, short_input) for _ in range(2)]
        assert all(q["status"] == "queued" for q in queued)
        before = s.submitted_total()

        r = s.submit(type_, short_input)
        sy.assert_problem(r, 429, "queue_full")
        ra = r.headers.get("Retry-After") or ""
        assert ra.isdigit(), f"Retry-After {ra!r}"
        r = s.request("POST", "/v1/jobs:batch", {"jobs": [{"type": type_, "input": short_input}]})
        sy.assert_problem(r, 429, "queue_full")
        assert s.submitted_total() == before, "a refused job was counted"
        model = running["model"]
        assert s.stats()["models"][model]["queued"] == 2

        # room again once a queued job is cancelled
        assert s.request("DELETE", f"/v1/jobs/{queued[0]['id']}").status == 200
        again = s.submit_ok(type_, short_input)
        assert again["status"] == "queued"
        for j in [running, queued[1], again]:
            s.request("DELETE", f"/v1/jobs/{j['id']}")
        s.wait_idle()

    # the limit is per model: with the process queue full, io jobs still get in
    blocker = s.submit_ok("burn", {"ms": 10000})
    s.wait_status(blocker["id"], "running")
    for _ in range(2):
        s.submit_ok("burn", {"ms": 50})
    sy.assert_problem(s.submit("burn", {"ms": 50}), 429, "queue_full")
    assert s.wait_job(s.submit_ok("sleep", {"ms": 1})["id"])["status"] == "succeeded"


def test_expect_100_continue_is_answered_before_the_body(server):
    """curl sends Expect: 100-continue for larger bodies and waits; the server must say go on."""
    body = json.dumps({"jobs": [{"type": "sleep", "input": {"ms": 1}}] * 50}).encode()
    head = (f"POST /v1/jobs:batch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n").encode()
    with socket.create_connection((sy.HOST, server.port), timeout=5) as sock:
        sock.sendall(head)
        f = sock.makefile("rb")
        status, _, _ = sy.read_raw_response(f)  # within the 5 s timeout, before any body byte
        assert status == 100
        sock.sendall(body)
        status, _, payload = sy.read_raw_response(f)
        f.close()
    assert status == 202
    assert len(json.loads(payload)["jobs"]) == 50
