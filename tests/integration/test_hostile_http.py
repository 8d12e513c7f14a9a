"""Malformed and hostile HTTP/1.1 against the real binary, over raw sockets.

Every case asserts the precise answer: the 4xx status and its problem+json ``code`` (RFC 9457),
or a clean close when closing is the right thing to do; after every case the server must still
answer ``GET /healthz`` with 200 and its process must be alive. Framing errors (request line,
headers, Content-Length, Transfer-Encoding, chunks) must also close the connection, so that no
byte after the error is ever read as a new request (request smuggling).

The expected statuses follow RFC 9110/9112 and api/API.md:

- a malformed request line, header block, Content-Length, chunk or Host: 400 ``bad_request``;
- header block over --max-header-bytes: 431 ``headers_too_large``; a request-target longer
  than the server will parse: 414 (RFC 9112 section 3);
- body over --max-body-bytes (declared or chunked): 413 ``body_too_large``;
- Transfer-Encoding whose final coding is not ``chunked`` (or HTTP/1.0 with Transfer-Encoding):
  400 and close (RFC 9112 section 6.3 rule 4, section 6.1); a transfer coding the server does
  not implement before ``chunked``: 501 (RFC 9112 section 6.1);
- JSON that does not parse (bad UTF-8, lone surrogates, nesting over the limit, numbers out of
  range, trailing bytes): 400 ``invalid_json``; JSON that breaks the schema: 422
  ``validation_failed`` with ``errors[].path``; wrong media type: 415;
- bad query strings: 400 ``invalid_query``; a bad token: 401 ``unauthorized``;
- slow or silent clients are cut at --read-timeout-ms.

Cases already covered by test_errors.py / test_http.py / test_races.py are not repeated here.
Standard library only; every loop is bounded in count and time.
"""

import json
import os
import select
import socket
import struct
import threading
import time
from collections import namedtuple

import pytest

import sy_helpers as sy

MAX_BODY = 1 << 20       # the shared server's --max-body-bytes (default)
MAX_HEADER = 16 << 10    # the shared server's --max-header-bytes (default)
READ_TIMEOUT_MS = 1000   # the short-deadline server's --read-timeout-ms
SLACK_S = 1.5            # scheduling slack allowed past a server deadline

Exchange = namedtuple("Exchange", "responses closed reset elapsed")

JSON_CT = b"Content-Type: application/json\r\n"
# A complete request carried as the "body" of a request whose framing is broken: if the server
# mis-frames the outer request it answers this one too (a second response) - request smuggling.
# It asks for Connection: close so that a failing case does not wait for a keep-alive timeout.
SMUGGLED = b"GET /v1/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


# --- helpers ---------------------------------------------------------------------------------

def _decode(headers, body):
    if "json" in headers.get("content-type", ""):
        try:
            return json.loads(body.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return body.decode("utf-8", "replace")
    return body


def exchange(port, data, *, read_for=5.0, shutdown_write=False, max_responses=6):
    """Send ``data`` and read responses until the server closes or ``read_for`` seconds pass.

    The bytes are written from a helper thread, so that a server that answers and closes before
    the client has sent everything (414, 431, 413) is observed as it is, not as a client EPIPE.
    Returns Exchange(responses: [sy.Response], closed: the server closed its side, reset: the
    close was a TCP reset, elapsed)."""
    t0 = time.monotonic()
    sock = socket.create_connection((sy.HOST, port), timeout=read_for)

    def send():
        try:
            sock.sendall(data)
            if shutdown_write:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server closed first: what it answered is what the test looks at

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    f = sock.makefile("rb")
    responses, closed, reset = [], False, False
    try:
        for _ in range(max_responses):
            try:
                status, headers, body = sy.read_raw_response(f)
            except ConnectionResetError:
                closed = reset = True
                break
            except ConnectionError:  # EOF before a status line
                closed = True
                break
            except (socket.timeout, TimeoutError):
                break
            responses.append(sy.Response(status, headers, _decode(headers, body)))
        else:
            try:
                closed = f.read(1) == b""
            except (socket.timeout, TimeoutError):
                pass
            except ConnectionResetError:
                closed = reset = True
    finally:
        f.close()
        sock.close()
        sender.join(2)
    return Exchange(responses, closed, reset, time.monotonic() - t0)


def statuses(ex):
    return [r.status for r in ex.responses]


def assert_one_problem(ex, status, code=None, *, closes=True, what=b""):
    """Exactly one response, a problem+json ``status`` [with ``code``]; with ``closes``, the
    server says Connection: close and closes, and nothing after the error is answered."""
    assert len(ex.responses) == 1, \
        f"{what[:120]!r}: expected one {status} response, got {statuses(ex)}: " \
        f"{[r.body for r in ex.responses]!r}"
    body = sy.assert_problem(ex.responses[0], status, code)
    if closes:
        assert ex.responses[0].headers.get("connection", "").lower() == "close", \
            f"{what[:120]!r}: no Connection: close on a {status}"
        assert ex.closed, f"{what[:120]!r}: the connection stayed open after a {status}"
    return body


def assert_serving(srv):
    """The server process is alive (not a zombie) and answers /healthz."""
    assert srv.alive(), f"server pid {srv.pid} exited with {srv.proc.returncode}\n{srv.log_tail()}"
    st = sy.proc_stat(srv.pid)
    assert st is not None and st["state"] not in ("Z", "X"), f"server pid {srv.pid}: {st}"
    r = srv.get("/healthz", timeout=5)
    assert r.status == 200, f"/healthz answered {r.status}: {r.body!r}\n{srv.log_tail()}"


def post_bytes(path, body, *, ctype=b"application/json", extra=b"", close=True):
    head = b"POST %s HTTP/1.1\r\nHost: x\r\n" % path
    if ctype is not None:
        head += b"Content-Type: " + ctype + b"\r\n"
    head += b"Content-Length: %d\r\n" % len(body) + extra
    if close:
        head += b"Connection: close\r\n"
    return head + b"\r\n" + body


def chunked_post(chunks_and_tail, extra=b""):
    return (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n" + JSON_CT + extra +
            b"Transfer-Encoding: chunked\r\n\r\n" + chunks_and_tail)


@pytest.fixture(scope="module")
def short(module_server_factory):
    """A server with a 1 s read deadline, for slow and silent clients."""
    return module_server_factory("--process-workers", "1", "--read-timeout-ms", str(READ_TIMEOUT_MS))


@pytest.fixture(scope="module")
def done_job(server):
    r = server.submit("sleep", {"ms": 1}, headers={"Prefer": "wait=5"})
    assert r.status == 200 and r.body["status"] == "succeeded", (r.status, r.body)
    return r.body


# --- request line ----------------------------------------------------------------------------

TLS_CLIENT_HELLO = bytes.fromhex("16030100f4010000f00303") + bytes(range(32)) + b"\x00\x02\x13\x01\x01\x00"

BAD_REQUEST_LINES = [
    ("garbage-bytes", b"\x00\x01\x02garbage\xff\r\n\r\n"),
    ("binary-without-line-end", bytes(range(256))),
    ("tls-client-hello", TLS_CLIENT_HELLO),
    ("missing-version", b"GET /healthz\r\nHost: x\r\n\r\n"),
    ("http-2.0", b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n"),
    ("http-9.9", b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n"),
    ("http-0.9", b"GET /healthz HTTP/0.9\r\nHost: x\r\n\r\n"),
    ("version-1.10", b"GET /healthz HTTP/1.10\r\nHost: x\r\n\r\n"),
    ("lowercase-protocol", b"GET /healthz http/1.1\r\nHost: x\r\n\r\n"),
    ("h2-prior-knowledge-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    ("space-before-method", b" GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("two-spaces", b"GET  /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("tab-separator", b"GET\t/healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("space-after-version", b"GET /healthz HTTP/1.1 \r\nHost: x\r\n\r\n"),
    ("nul-in-target", b"GET /heal\x00thz HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("nul-in-method", b"G\x00T /healthz HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("control-byte-in-query", b"GET /v1/jobs?limit=1\x01 HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("cr-without-lf", b"GET /healthz HTTP/1.1\rHost: x\r\r"),
    ("bare-lf-line-endings", b"GET /healthz HTTP/1.1\nHost: x\n\n"),
]


@pytest.mark.parametrize("raw", [c[1] for c in BAD_REQUEST_LINES], ids=[c[0] for c in BAD_REQUEST_LINES])
def test_malformed_request_line_is_400_and_closes(server, raw):
    assert_one_problem(exchange(server.port, raw), 400, "bad_request", what=raw)
    assert_serving(server)


UNKNOWN_METHODS = [
    ("lowercase-get", b"get /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", {"GET", "HEAD"}),
    ("FOO-on-jobs", b"FOO /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", {"GET", "HEAD", "POST"}),
    ("lowercase-post-on-jobs", b"post /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + JSON_CT +
     b"Content-Length: 2\r\n\r\n{}", {"GET", "HEAD", "POST"}),
]


@pytest.mark.parametrize("raw,allow", [c[1:] for c in UNKNOWN_METHODS], ids=[c[0] for c in UNKNOWN_METHODS])
def test_unknown_or_lowercase_method_is_405_with_allow(server, raw, allow):
    """Methods are case-sensitive (RFC 9110 section 9.1): `get` is not GET."""
    before = server.submitted_total()
    ex = exchange(server.port, raw)
    assert_one_problem(ex, 405, "method_not_allowed", closes=False, what=raw)
    got = {m.strip() for m in ex.responses[0].headers.get("allow", "").split(",") if m.strip()}
    assert got == allow, f"Allow {got} for {raw[:40]!r}"
    assert server.submitted_total() == before
    assert_serving(server)


def test_absolute_form_target_is_served(server):
    """RFC 9112 section 3.2.2: a server MUST accept the absolute-form of request-target."""
    raw = (b"GET http://127.0.0.1/healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
           b"Connection: close\r\n\r\n")
    ex = exchange(server.port, raw)
    assert statuses(ex) == [200], f"{raw!r}: {statuses(ex)} {[r.body for r in ex.responses]!r}"
    assert ex.responses[0].body == {"status": "ok"}
    assert_serving(server)


BAD_TARGETS = [
    ("no-leading-slash", b"GET healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ("asterisk-with-GET", b"GET * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ("authority-form-with-GET", b"GET 127.0.0.1:80 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ("fragment-in-target", b"GET /healthz#frag HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
]


@pytest.mark.parametrize("raw", [c[1] for c in BAD_TARGETS], ids=[c[0] for c in BAD_TARGETS])
def test_request_target_not_in_origin_form_is_400(server, raw):
    """RFC 9112 section 3.2: a GET target is origin-form or absolute-form; anything else
    (no leading slash, '*', authority-form, a '#fragment') is a malformed request, not a 404."""
    assert_one_problem(exchange(server.port, raw), 400, "bad_request", closes=False, what=raw)
    assert_serving(server)


def test_100_kb_request_target_is_414(server):
    """RFC 9112 section 3: a request-target longer than the server parses is 414 URI Too Long."""
    raw = b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    assert_one_problem(exchange(server.port, raw), 414, what=raw)
    assert_serving(server)


# --- header block ----------------------------------------------------------------------------

def _get_with(header_lines):
    return b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + header_lines + b"\r\n"


OVERSIZED_HEADERS = [
    ("3000-headers", _get_with(b"".join(b"X-H%d: v\r\n" % i for i in range(3000)))),
    ("one-header-over-the-limit", _get_with(b"X-Big: " + b"a" * (MAX_HEADER + 1) + b"\r\n")),
]


@pytest.mark.parametrize("raw", [c[1] for c in OVERSIZED_HEADERS], ids=[c[0] for c in OVERSIZED_HEADERS])
def test_header_block_over_the_limit_is_431_and_closes(server, raw):
    assert_one_problem(exchange(server.port, raw), 431, "headers_too_large", what=raw)
    assert_serving(server)


def test_many_small_headers_under_the_byte_limit_are_fine(server):
    raw = _get_with(b"".join(b"X%d: v\r\n" % i for i in range(1000)))
    assert len(raw) < MAX_HEADER
    status, _, body = sy.raw_exchange(server.port, raw, 1)[0]
    assert status == 200, body
    assert_serving(server)


BAD_HEADER_LINES = [
    ("no-colon", b"NoColonHere\r\n"),
    ("space-before-colon", b"X-A : b\r\n"),
    ("tab-before-colon", b"X-A\t: b\r\n"),
    ("parens-in-name", b"X(A): b\r\n"),
    ("space-in-name", b"X A: b\r\n"),
    ("control-byte-in-name", b"X\x01A: b\r\n"),
    ("non-ascii-in-name", b"X\xc3\xa9: b\r\n"),
    ("empty-name", b": v\r\n"),
    ("nul-in-value", b"X-A: a\x00b\r\n"),
    ("control-byte-in-value", b"X-A: a\x01b\r\n"),
    ("del-in-value", b"X-A: a\x7fb\r\n"),
    ("bare-cr-in-value", b"X-A: a\rb\r\n"),
    ("bare-lf-inside-block", b"X-A: b\nX-B: c\r\n"),
]


@pytest.mark.parametrize("line", [c[1] for c in BAD_HEADER_LINES], ids=[c[0] for c in BAD_HEADER_LINES])
def test_malformed_header_line_is_400_and_closes(server, line):
    raw = _get_with(line)
    assert_one_problem(exchange(server.port, raw), 400, "bad_request", what=raw)
    assert_serving(server)


def test_whitespace_before_the_first_header_is_400(server):
    """RFC 9112 section 2.2: whitespace between the start-line and the first field line."""
    raw = b"GET /healthz HTTP/1.1\r\n  Host: x\r\n\r\n"
    assert_one_problem(exchange(server.port, raw), 400, "bad_request", what=raw)
    assert_serving(server)


def test_obs_fold_is_rejected_or_unfolded(server):
    """RFC 9112 section 5.2: a server MUST either reject obs-fold with 400 or replace it by
    spaces. Either answer is exact; anything else (a 5xx, a hang, the continuation read as a
    field of its own) is not."""
    raw = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: b\r\n  continued\r\nConnection: close\r\n\r\n"
    ex = exchange(server.port, raw)
    assert len(ex.responses) == 1, statuses(ex)
    if ex.responses[0].status == 200:
        assert ex.responses[0].body == {"status": "ok"}
    else:
        assert_one_problem(ex, 400, "bad_request", what=raw)
    assert_serving(server)


def test_folded_content_length_is_400_not_a_guess(server):
    """'Content-Length: 2<CRLF> 0' must not be read as 2, nor as 20."""
    raw = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n" + JSON_CT + b"Content-Length: 2\r\n 0\r\n\r\n{}" +
           SMUGGLED)
    assert_one_problem(exchange(server.port, raw), 400, "bad_request", what=raw)
    assert_serving(server)


# --- Content-Length --------------------------------------------------------------------------

BAD_CONTENT_LENGTHS = [
    ("duplicate-different", b"Content-Length: 2\r\nContent-Length: 3\r\n"),
    ("plus-sign", b"Content-Length: +2\r\n"),
    ("minus-sign", b"Content-Length: -2\r\n"),
    ("hex", b"Content-Length: 0x2\r\n"),
    ("garbage", b"Content-Length: abc\r\n"),
    ("empty", b"Content-Length: \r\n"),
    ("two-numbers", b"Content-Length: 2 2\r\n"),
    ("exponent", b"Content-Length: 2e0\r\n"),
    ("fullwidth-digit", b"Content-Length: \xef\xbc\x92\r\n"),
    ("overflow", b"Content-Length: 99999999999999999999999\r\n"),
    ("2-to-the-64", b"Content-Length: 18446744073709551616\r\n"),
]


@pytest.mark.parametrize("cl", [c[1] for c in BAD_CONTENT_LENGTHS], ids=[c[0] for c in BAD_CONTENT_LENGTHS])
def test_malformed_content_length_is_400_and_closes(server, cl):
    before = server.submitted_total()
    raw = b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n" + JSON_CT + cl + b"\r\n{}" + SMUGGLED
    assert_one_problem(exchange(server.port, raw), 400, "bad_request", what=raw)
    assert server.submitted_total() == before
    assert_serving(server)


@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100-continue"])
def test_content_length_one_over_the_limit_is_413_before_any_body(server, expect):
    """Declared MAX_BODY + 1: 413 at once, without reading the body or saying 100 Continue."""
    raw = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n" + JSON_CT +
           b"Content-Length: %d\r\n" % (MAX_BODY + 1) +
           (b"Expect: 100-continue\r\n" if expect else b"") + b"\r\n")
    ex = exchange(server.port, raw, read_for=5)
    assert_one_problem(ex, 413, "body_too_large", what=raw)
    assert ex.elapsed < 3, f"413 took {ex.elapsed:.1f}s"
    assert_serving(server)


# --- Transfer-Encoding -----------------------------------------------------------------------

CHUNKED_EMPTY_OBJECT = b"2\r\n{}\r\n0\r\n\r\n"

BAD_FRAMINGS = [
    # (id, request, status, code)
    ("content-length-and-chunked",
     b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n" + JSON_CT +
     b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_EMPTY_OBJECT + SMUGGLED,
     400, "bad_request"),
    ("content-length-and-identity",
     b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n" + JSON_CT +
     b"Transfer-Encoding: identity\r\nContent-Length: 2\r\n\r\n{}" + SMUGGLED,
     400, "bad_request"),
    ("gzip-not-chunked",
     b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n" + JSON_CT + b"Transfer-Encoding: gzip\r\n\r\n" + SMUGGLED,
     400, "bad_request"),
    ("unknown-coding",
     b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n" + JSON_CT + b"Transfer-Encoding: bogus\r\n\r\n" + SMUGGLED,
     400, "bad_request"),
    ("chunked-then-gzip",
     b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n" + JSON_CT + b"Transfer-Encoding: chunked, gzip\r\n\r\n" +
     SMUGGLED, 400, "bad_request"),
    ("chunked-twice",
     b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n" + JSON_CT + b"Transfer-Encoding: chunked, chunked\r\n\r\n" +
     b"%x\r\n" % len(SMUGGLED) + SMUGGLED + b"\r\n0\r\n\r\n", 400, "bad_request"),
    ("http-1.0-with-chunked",
     b"POST /v1/jobs HTTP/1.0\r\n" + JSON_CT + b"Transfer-Encoding: chunked\r\n\r\n" + CHUNKED_EMPTY_OBJECT,
     400, "bad_request"),
]


@pytest.mark.parametrize("raw,status,code", [c[1:] for c in BAD_FRAMINGS], ids=[c[0] for c in BAD_FRAMINGS])
def test_ambiguous_or_unsupported_framing_is_refused_and_closes(server, raw, status, code):
    """RFC 9112 section 6.3: Transfer-Encoding whose final coding is not chunked is a 400 and a
    close; Content-Length with Transfer-Encoding ought to be an error; HTTP/1.0 with
    Transfer-Encoding is faulty framing (section 6.1). Never read the body as a new request."""
    before = server.submitted_total()
    assert_one_problem(exchange(server.port, raw), status, code, what=raw)
    assert server.submitted_total() == before
    assert_serving(server)


UNIMPLEMENTED_CODINGS = [
    ("gzip-then-chunked", b"Transfer-Encoding: gzip, chunked\r\n"),
    ("two-fields-gzip-and-chunked", b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"),
]


@pytest.mark.parametrize("te", [c[1] for c in UNIMPLEMENTED_CODINGS], ids=[c[0] for c in UNIMPLEMENTED_CODINGS])
def test_transfer_coding_the_server_does_not_implement_is_501(server, te):
    """RFC 9112 section 6.1: a transfer coding the server does not understand: 501. The body
    must never be handed on as if it were not gzip-encoded (that gives a misleading 422)."""
    before = server.submitted_total()
    raw = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + JSON_CT + te + b"\r\n" +
           CHUNKED_EMPTY_OBJECT)
    assert_one_problem(exchange(server.port, raw), 501, closes=False, what=raw)
    assert server.submitted_total() == before
    assert_serving(server)


# --- Host ------------------------------------------------------------------------------------

BAD_HOSTS = [
    ("missing-on-http-1.1", b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n"),
    ("two-host-fields", b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"),
    ("space-in-host", b"GET /healthz HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n"),
    ("userinfo-and-path-in-host", b"GET /healthz HTTP/1.1\r\nHost: a/b@c\r\nConnection: close\r\n\r\n"),
]


@pytest.mark.parametrize("raw", [c[1] for c in BAD_HOSTS], ids=[c[0] for c in BAD_HOSTS])
def test_missing_duplicate_or_invalid_host_is_400(server, raw):
    """RFC 9112 section 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host, with
    more than one Host, or with an invalid Host value."""
    assert_one_problem(exchange(server.port, raw), 400, "bad_request", closes=False, what=raw)
    assert_serving(server)


@pytest.mark.parametrize("raw", [
    b"GET /healthz HTTP/1.0\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost:\r\nConnection: close\r\n\r\n",
], ids=["http-1.0-without-host", "empty-host"])
def test_host_rules_do_not_reject_valid_requests(server, raw):
    ex = exchange(server.port, raw)
    assert statuses(ex) == [200] and ex.closed, (raw, statuses(ex))
    assert_serving(server)


# --- chunked bodies --------------------------------------------------------------------------

BAD_CHUNKS = [
    # (id, chunks, status, code)
    ("bad-hex-size", b"zz\r\n{}\r\n0\r\n\r\n", 400, "bad_request"),
    ("negative-size", b"-2\r\n{}\r\n0\r\n\r\n", 400, "bad_request"),
    ("0x-prefixed-size", b"0x2\r\n{}\r\n0\r\n\r\n", 400, "bad_request"),
    ("space-after-size", b"2 \r\n{}\r\n0\r\n\r\n", 400, "bad_request"),
    ("size-overflows-64-bits", b"ffffffffffffffffffff\r\n{}\r\n0\r\n\r\n", 400, "bad_request"),
    ("size-over-the-body-limit", b"%x\r\n{}\r\n0\r\n\r\n" % (MAX_BODY + 1), 413, "body_too_large"),
    ("missing-crlf-after-data", b"2\r\n{}XX0\r\n\r\n", 400, "bad_request"),
    ("data-longer-than-size", b"2\r\n{}}\r\n0\r\n\r\n", 400, "bad_request"),
    ("20-kb-chunk-extension", b"2;" + b"a=b;" * 5000 + b"\r\n{}\r\n0\r\n\r\n", 400, "bad_request"),
    ("extension-without-name", b"2;\r\n{}\r\n0\r\n\r\n", 400, "bad_request"),
    ("control-byte-in-extension", b"2;a=\x01\r\n{}\r\n0\r\n\r\n", 400, "bad_request"),
    ("malformed-trailer", b"2\r\n{}\r\n0\r\nBad Trailer\r\n\r\n", 400, "bad_request"),
    ("total-over-the-body-limit",
     (b"10000\r\n" + b" " * 0x10000 + b"\r\n") * (MAX_BODY // 0x10000 + 1) + b"2\r\n{}\r\n0\r\n\r\n",
     413, "body_too_large"),
]


@pytest.mark.parametrize("chunks,status,code", [c[1:] for c in BAD_CHUNKS], ids=[c[0] for c in BAD_CHUNKS])
def test_malformed_or_oversized_chunked_body_is_refused_and_closes(server, chunks, status, code):
    before = server.submitted_total()
    raw = chunked_post(chunks)
    assert_one_problem(exchange(server.port, raw + SMUGGLED), status, code, what=raw)
    assert server.submitted_total() == before
    assert_serving(server)


def test_many_chunks_with_extensions_stay_bounded(server):
    """2000 one-byte chunks, each with an extension: parsed (the JSON is then a 422), promptly."""
    raw = chunked_post(b"1;ext=val\r\n \r\n" * 2000 + b"2\r\n{}\r\n0\r\n\r\n", extra=b"Connection: close\r\n")
    ex = exchange(server.port, raw)
    body = assert_one_problem(ex, 422, "validation_failed", closes=False, what=raw)
    assert "/type" in sy.error_paths(body)
    assert ex.elapsed < 5
    assert_serving(server)


@pytest.mark.parametrize("raw", [
    chunked_post(b"10\r\n{\"ty"),
    b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n" + JSON_CT + b"Content-Length: 100\r\n\r\n{\"ty",
], ids=["chunked", "content-length"])
def test_truncated_body_then_half_close_is_closed_without_an_answer(server, raw):
    """The client sends part of a body and shuts its side: nobody is left to answer, the server
    closes at once (a 400 would do too) and creates nothing."""
    before = server.submitted_total()
    ex = exchange(server.port, raw, shutdown_write=True, read_for=5)
    assert ex.closed and ex.elapsed < 3, (ex.closed, ex.elapsed)
    assert statuses(ex) in ([], [400]), statuses(ex)
    if ex.responses:
        assert_one_problem(ex, 400, "bad_request", what=raw)
    assert server.submitted_total() == before
    assert_serving(server)


def test_truncated_chunked_body_then_abrupt_close(server):
    for _ in range(20):
        with socket.create_connection((sy.HOST, server.port), timeout=5) as s:
            s.sendall(chunked_post(b"100\r\n" + b"{" * 50))
        # and a reset instead of a FIN
        s = socket.create_connection((sy.HOST, server.port), timeout=5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.sendall(chunked_post(b"100\r\n" + b"[" * 50))
        s.close()
    assert_serving(server)


# --- JSON bodies to POST /v1/jobs and /v1/jobs:batch -----------------------------------------

DEEP = 100_000
INVALID_JSON = [
    ("bad-utf8-in-string", b'{"type":"sleep","input":{"ms":1,"x":"\xc3\x28"}}'),
    ("bad-utf8-in-key", b'{"type":"sleep","input":{"ms":1,"\xc3\x28":1}}'),
    ("lone-continuation-byte", b'{"type":"sl\x80eep","input":{"ms":1}}'),
    ("truncated-multibyte", b'{"type":"sleep\xe2\x82","input":{"ms":1}}'),
    ("overlong-slash", b'{"type":"sleep\xc0\xaf","input":{"ms":1}}'),
    ("overlong-nul", b'{"type":"sleep","input":{"ms":1,"k":"\xc0\x80"}}'),
    ("overlong-3-byte", b'{"type":"\xe0\x80\xaf","input":{}}'),
    ("utf8-encoded-surrogate", b'{"type":"\xed\xa0\x80","input":{}}'),
    ("cesu-8-pair", b'{"type":"\xed\xa0\xbd\xed\xb8\x80","input":{}}'),
    ("above-U+10FFFF", b'{"type":"\xf4\x90\x80\x80","input":{}}'),
    ("5-byte-sequence", b'{"type":"\xf8\x88\x80\x80\x80","input":{}}'),
    ("escaped-lone-high-surrogate", b'{"type":"\\ud800","input":{}}'),
    ("escaped-lone-low-surrogate", b'{"type":"\\udc00","input":{}}'),
    ("high-surrogate-then-letter", b'{"type":"\\ud800\\u0041","input":{}}'),
    ("lone-surrogate-in-input-key", b'{"type":"sleep","input":{"ms":1,"\\ud800":1}}'),
    ("lone-surrogate-in-input-value", b'{"type":"hash","input":{"data":"\\udfff"}}'),
    ("100k-nested-arrays", b"[" * DEEP + b"]" * DEEP),
    ("100k-nested-objects", b'{"a":' * DEEP + b"1" + b"}" * DEEP),
    ("100k-unclosed-arrays", b"[" * DEEP),
    ("100k-nested-inside-input", b'{"type":"sleep","input":{"ms":1,"x":' + b"[" * DEEP + b"]" * DEEP + b"}}"),
    ("65-levels", b"[" * 65 + b"]" * 65),
    ("1e400-ms", b'{"type":"sleep","input":{"ms":1e400}}'),
    ("minus-1e400-priority", b'{"type":"sleep","input":{"ms":1},"priority":-1e400}'),
    ("1e400-timeout", b'{"type":"sleep","input":{"ms":1},"timeout_ms":1e400}'),
    ("trailing-garbage", b'{"type":"sleep","input":{"ms":1}} xyz'),
    ("trailing-second-value", b'{"type":"sleep","input":{"ms":1}}{}'),
    ("nul-then-garbage-after-json", b'{"type":"sleep","input":{"ms":1}}\x00xyz'),
    ("nul-then-second-json", b'{"jobs":[{"type":"sleep","input":{"ms":1}}]}\x00{"type":"sleep","input":{"ms":1}}'),
    ("nul-only", b"\x00"),
    ("whitespace-only", b" \t\r\n "),
    ("comment", b'{"type":"sleep",/*c*/"input":{"ms":1}}'),
    ("single-quotes", b"{'type':'sleep'}"),
    ("leading-plus", b'{"type":"sleep","input":{"ms":+1}}'),
    ("leading-zero", b'{"type":"sleep","input":{"ms":01}}'),
    ("hex-number", b'{"type":"sleep","input":{"ms":0x10}}'),
    ("infinity", b'{"type":"sleep","input":{"ms":Infinity}}'),
    ("utf-16le-body", '{"type":"sleep","input":{"ms":1}}'.encode("utf-16-le")),
    ("raw-control-char-in-string", b'{"type":"sle\x01ep","input":{"ms":1}}'),
    ("bad-escape", b'{"type":"sle\\xep","input":{"ms":1}}'),
]


@pytest.mark.parametrize("raw", [c[1] for c in INVALID_JSON], ids=[c[0] for c in INVALID_JSON])
def test_unparseable_json_is_400_invalid_json_on_both_endpoints(server, raw):
    before = server.submitted_total()
    for path in ("/v1/jobs", "/v1/jobs:batch"):
        r = server.request("POST", path, raw=raw, timeout=10)
        assert r.status == 400, f"POST {path} {raw[:80]!r}: {r.status} {r.body!r}"
        sy.assert_problem(r, 400, "invalid_json")
    assert server.submitted_total() == before, "an unparseable body created a job"
    assert_serving(server)


_S = '"type":"sleep","input":{"ms":1}'
SCHEMA_ERRORS = [
    # (id, JSON text of one job request, errors[].path, code); cases of test_errors.py omitted
    ("type-array", '{"type":["sleep"]}', "/type", "validation_failed"),
    ("type-object", '{"type":{"name":"sleep"}}', "/type", "validation_failed"),
    ("type-bool", '{"type":true}', "/type", "validation_failed"),
    ("type-float", '{"type":1.5}', "/type", "validation_failed"),
    ("type-empty-string", '{"type":""}', "/type", "unknown_job_type"),
    ("type-wrong-case", '{"type":"SLEEP","input":{"ms":1}}', "/type", "unknown_job_type"),
    ("type-with-nul", '{"type":"sleep\\u0000x","input":{"ms":1}}', "/type", "unknown_job_type"),
    ("input-null", '{"type":"sleep","input":null}', "/input", "validation_failed"),
    ("input-number", '{"type":"sleep","input":1}', "/input", "validation_failed"),
    ("input-bool", '{"type":"sleep","input":false}', "/input", "validation_failed"),
    ("input-json-in-a-string", '{"type":"sleep","input":"{\\"ms\\":1}"}', "/input", "validation_failed"),
    ("model-null", '{%s,"model":null}' % _S, "/model", "validation_failed"),
    ("model-array", '{%s,"model":["thread"]}' % _S, "/model", "validation_failed"),
    ("model-object", '{%s,"model":{}}' % _S, "/model", "validation_failed"),
    ("model-bool", '{%s,"model":true}' % _S, "/model", "validation_failed"),
    ("model-wrong-case", '{%s,"model":"THREAD"}' % _S, "/model", "validation_failed"),
    ("model-empty", '{%s,"model":""}' % _S, "/model", "validation_failed"),
    ("priority-null", '{%s,"priority":null}' % _S, "/priority", "validation_failed"),
    ("priority-numeric-string", '{%s,"priority":"1"}' % _S, "/priority", "validation_failed"),
    ("priority-array", '{%s,"priority":[1]}' % _S, "/priority", "validation_failed"),
    ("priority-object", '{%s,"priority":{}}' % _S, "/priority", "validation_failed"),
    ("priority-1.0", '{%s,"priority":1.0}' % _S, "/priority", "validation_failed"),
    ("priority-1e1", '{%s,"priority":1e1}' % _S, "/priority", "validation_failed"),
    ("priority-2**63", '{%s,"priority":9223372036854775808}' % _S, "/priority", "validation_failed"),
    ("priority-2**64", '{%s,"priority":18446744073709551616}' % _S, "/priority", "validation_failed"),
    ("priority-minus-2**63-1", '{%s,"priority":-9223372036854775809}' % _S, "/priority", "validation_failed"),
    ("timeout-null", '{%s,"timeout_ms":null}' % _S, "/timeout_ms", "validation_failed"),
    ("timeout-bool", '{%s,"timeout_ms":true}' % _S, "/timeout_ms", "validation_failed"),
    ("timeout-array", '{%s,"timeout_ms":[1000]}' % _S, "/timeout_ms", "validation_failed"),
    ("timeout-object", '{%s,"timeout_ms":{}}' % _S, "/timeout_ms", "validation_failed"),
    ("timeout-1000.0", '{%s,"timeout_ms":1000.0}' % _S, "/timeout_ms", "validation_failed"),
    ("timeout-minus-0", '{%s,"timeout_ms":-0}' % _S, "/timeout_ms", "validation_failed"),
    ("timeout-2**63-1", '{%s,"timeout_ms":9223372036854775807}' % _S, "/timeout_ms", "validation_failed"),
    ("timeout-2**64", '{%s,"timeout_ms":18446744073709551616}' % _S, "/timeout_ms", "validation_failed"),
    ("ms-2**64", '{"type":"sleep","input":{"ms":18446744073709551616}}', "/input/ms", "validation_failed"),
    ("ms-2**64-1", '{"type":"sleep","input":{"ms":18446744073709551615}}', "/input/ms", "validation_failed"),
    ("ms-1.0", '{"type":"sleep","input":{"ms":1.0}}', "/input/ms", "validation_failed"),
    ("ms-numeric-string", '{"type":"sleep","input":{"ms":"1"}}', "/input/ms", "validation_failed"),
    ("ms-null", '{"type":"sleep","input":{"ms":null}}', "/input/ms", "validation_failed"),
    ("ms-bool", '{"type":"sleep","input":{"ms":true}}', "/input/ms", "validation_failed"),
    ("primes-n-2**64", '{"type":"primes","input":{"n":18446744073709551616}}', "/input/n", "validation_failed"),
    ("idempotency_key-in-body", '{%s,"idempotency_key":"k1"}' % _S, "/idempotency_key", "validation_failed"),
    ("field-name-wrong-case", '{%s,"Priority":1}' % _S, "/Priority", "validation_failed"),
    ("__proto__-field", '{%s,"__proto__":{}}' % _S, "/__proto__", "validation_failed"),
    ("unknown-field-in-input", '{"type":"sleep","input":{"ms":1,"extra":1}}', "/input/extra", "validation_failed"),
    ("null-job", 'null', "", "validation_failed"),
    ("string-job", '"sleep"', "", "validation_failed"),
]


@pytest.mark.parametrize("text,path,code", [c[1:] for c in SCHEMA_ERRORS], ids=[c[0] for c in SCHEMA_ERRORS])
def test_schema_violation_is_422_with_path_on_both_endpoints(server, text, path, code):
    before = server.submitted_total()
    raw = text.encode()
    if text not in ("null", '"sleep"'):  # top-level non-objects are in test_errors.py for /v1/jobs
        sy.assert_validation(server.request("POST", "/v1/jobs", raw=raw), path, code)
    batch = b'{"jobs":[{"type":"sleep","input":{"ms":1}},' + raw + b"]}"
    sy.assert_validation(server.request("POST", "/v1/jobs:batch", raw=batch), "/jobs/1" + path, code)
    assert server.submitted_total() == before, "a rejected request created a job"
    assert_serving(server)


BATCH_SHAPES = [
    ("null", b"null", ""),
    ("array-of-jobs", b'[{"type":"sleep","input":{"ms":1}}]', ""),
    ("string", b'"jobs"', ""),
    ("number", b"1", ""),
    ("jobs-null", b'{"jobs":null}', "/jobs"),
    ("jobs-object", b'{"jobs":{"0":{"type":"sleep","input":{"ms":1}}}}', "/jobs"),
    ("jobs-string", b'{"jobs":"[]"}', "/jobs"),
    ("jobs-missing", b"{}", "/jobs"),
    ("jobs-wrong-case", b'{"JOBS":[{"type":"sleep","input":{"ms":1}}]}', "/JOBS"),
    ("unknown-top-level-field", b'{"jobs":[{"type":"sleep","input":{"ms":1}}],"x":1}', "/x"),
    ("item-array", b'{"jobs":[[]]}', "/jobs/0"),
    ("a-job-not-a-batch", b'{"type":"sleep","input":{"ms":1}}', "/type"),
]


@pytest.mark.parametrize("raw,path", [c[1:] for c in BATCH_SHAPES], ids=[c[0] for c in BATCH_SHAPES])
def test_batch_of_the_wrong_shape_is_422(server, raw, path):
    before = server.submitted_total()
    sy.assert_validation(server.request("POST", "/v1/jobs:batch", raw=raw), path, "validation_failed")
    assert server.submitted_total() == before
    assert_serving(server)


ACCEPTED_ODDITIES = [
    # RFC 8259 section 8.1: a parser MAY ignore a byte order mark; -0 is the integer zero
    ("utf8-bom", b"\xef\xbb\xbf", b'{"type":"sleep","input":{"ms":1}}'),
    ("ms-minus-0", b"", b'{"type":"sleep","input":{"ms":-0}}'),
    ("priority-minus-0", b"", b'{"type":"sleep","input":{"ms":1},"priority":-0}'),
    ("trailing-whitespace", b"", b'{"type":"sleep","input":{"ms":1}} \r\n\t '),
]


@pytest.mark.parametrize("prefix,job", [c[1:] for c in ACCEPTED_ODDITIES], ids=[c[0] for c in ACCEPTED_ODDITIES])
def test_valid_json_oddities_are_accepted(server, prefix, job):
    r = server.request("POST", "/v1/jobs", raw=prefix + job)
    assert r.status == 202, (r.status, r.body)
    sy.assert_job_resource(r.body)
    rb = server.request("POST", "/v1/jobs:batch", raw=prefix + b'{"jobs":[' + job.strip() + b"]}")
    assert rb.status == 202, (rb.status, rb.body)
    for j in [r.body] + rb.body["jobs"]:
        assert server.wait_job(j["id"])["status"] == "succeeded"
    assert_serving(server)


WRONG_CONTENT_TYPES = [
    ("missing", None),
    ("empty", ""),
    ("problem+json", "application/problem+json"),
    ("json-patch", "application/json-patch+json"),
    ("jsonx", "application/jsonx"),
    ("text-json", "text/json"),
    ("any", "*/*"),
    ("application-any", "application/*"),
    ("multipart", "multipart/form-data; boundary=x"),
    ("octet-stream", "application/octet-stream"),
    ("json-as-parameter", "text/plain; type=application/json"),
]


@pytest.mark.parametrize("ctype", [c[1] for c in WRONG_CONTENT_TYPES], ids=[c[0] for c in WRONG_CONTENT_TYPES])
def test_wrong_content_type_is_415_on_both_endpoints(server, ctype):
    before = server.submitted_total()
    job = b'{"type":"sleep","input":{"ms":1}}'
    for path, body in (("/v1/jobs", job), ("/v1/jobs:batch", b'{"jobs":[' + job + b"]}")):
        raw = post_bytes(path.encode(), body, ctype=None if ctype is None else ctype.encode())
        assert_one_problem(exchange(server.port, raw), 415, "unsupported_media_type", closes=False, what=raw)
    assert server.submitted_total() == before
    assert_serving(server)


@pytest.mark.parametrize("key,status,code", [
    (b"", 400, "invalid_header"),
    (b"a\tb", 400, "invalid_header"),
    (b"a\x7fb", 400, "bad_request"),
    (b"k\x00", 400, "bad_request"),
], ids=["empty", "tab-inside", "del-inside", "nul"])
def test_malformed_idempotency_key_header_is_400(server, key, status, code):
    before = server.submitted_total()
    raw = post_bytes(b"/v1/jobs", b'{"type":"sleep","input":{"ms":1}}', extra=b"Idempotency-Key: " + key + b"\r\n")
    assert_one_problem(exchange(server.port, raw), status, code, closes=code == "bad_request", what=raw)
    assert server.submitted_total() == before
    assert_serving(server)


# --- query strings ---------------------------------------------------------------------------

BAD_LIST_QUERIES = [
    "limit=%", "limit=%zz", "limit=%4", "limit=%G1", "limit=1%00", "limit=%201",
    "limit=99999999999999999999999", "limit=18446744073709551617", "limit=1e3", "limit=0x10",
    "limit=+1", "limit=1.5", "limit=1&limit=2000", "limit",
    "cursor=c1.", "cursor=c1.zzz", "cursor=%ff%fe", "cursor=" + "a" * 5000,
    "cursor=c1.0193f1c2-7a4e-7d3a-9a43-5f0d7e1b2c3d%00", "cursor=c1.0193f1c2-7a4e-7d3a-9a43-5f0d7e1b2c3d&cursor=x",
    "status=queued%00", "model=thread%20", "nope=1",
]


@pytest.mark.parametrize("query", BAD_LIST_QUERIES, ids=[q[:40] for q in BAD_LIST_QUERIES])
def test_bad_list_query_is_400_invalid_query(server, query):
    raw = b"GET /v1/jobs?" + query.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    assert_one_problem(exchange(server.port, raw), 400, "invalid_query", closes=False, what=raw)
    assert_serving(server)


def test_percent_encoded_list_query_is_decoded(server):
    raw = b"GET /v1/jobs?li%6dit=%31 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    ex = exchange(server.port, raw)
    assert statuses(ex) == [200], [r.body for r in ex.responses]
    assert len(ex.responses[0].body["jobs"]) <= 1
    assert_serving(server)


BAD_WAITS = ["wait=", "wait=-1", "wait=1e400", "wait=nan", "wait=inf", "wait=-inf", "wait=0x10",
             "wait=1.5.5", "wait=" + "9" * 40, "wait=1%00", "wait=%zz", "wait=1&x=2", "x=1", "wait"]


@pytest.mark.parametrize("query", BAD_WAITS, ids=BAD_WAITS)
def test_bad_wait_query_is_400_invalid_query(server, done_job, query):
    raw = (b"GET /v1/jobs/" + done_job["id"].encode() + b"?" + query.encode() +
           b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    ex = exchange(server.port, raw)
    assert_one_problem(ex, 400, "invalid_query", closes=False, what=raw)
    assert ex.elapsed < 2, "a malformed wait was waited for"
    assert_serving(server)


@pytest.mark.parametrize("query", ["wait=-0", "wait=%31", "wa%69t=1"], ids=["minus-0", "pct-1", "pct-key"])
def test_equivalent_wait_spellings_are_accepted(server, done_job, query):
    """RFC 3986 section 6.2.2.2: %31 is '1'; a terminal job answers at once."""
    raw = (b"GET /v1/jobs/" + done_job["id"].encode() + b"?" + query.encode() +
           b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    ex = exchange(server.port, raw)
    assert statuses(ex) == [200], f"{raw!r}: {statuses(ex)} {[r.body for r in ex.responses]!r}"
    assert ex.responses[0].body["id"] == done_job["id"]
    assert_serving(server)


# --- Prefer ----------------------------------------------------------------------------------

PREFER_GARBAGE = [b"wait=abc", b"wait=-1", b"wait=", b"wait", b"wait=1e400", b"wait=nan", b"wait=inf",
                  b'wait="', b'wait=""', b"wait==1", b"wait=0x10", b"garbage;;;,,,", b",", b";", b"=",
                  b"wait=\xff", b"wait=1" * 1000]


@pytest.mark.parametrize("prefer", PREFER_GARBAGE, ids=[p[:20].decode("latin-1") for p in PREFER_GARBAGE])
def test_prefer_garbage_is_ignored(server, prefer):
    """RFC 7240 section 2: a preference the server does not understand is ignored: 202 at once,
    no Preference-Applied."""
    raw = post_bytes(b"/v1/jobs", b'{"type":"sleep","input":{"ms":1}}', extra=b"Prefer: " + prefer + b"\r\n")
    ex = exchange(server.port, raw)
    assert statuses(ex) == [202], f"{prefer[:40]!r}: {statuses(ex)} {[r.body for r in ex.responses]!r}"
    assert "preference-applied" not in ex.responses[0].headers
    assert ex.elapsed < 2
    server.wait_job(ex.responses[0].body["id"])
    assert_serving(server)


def test_prefer_with_invalid_field_bytes_is_400(server):
    raw = post_bytes(b"/v1/jobs", b'{"type":"sleep","input":{"ms":1}}', extra=b"Prefer: wait=1\x7f\r\n")
    before = server.submitted_total()
    assert_one_problem(exchange(server.port, raw), 400, "bad_request", what=raw)
    assert server.submitted_total() == before
    assert_serving(server)


# --- Authorization ---------------------------------------------------------------------------

TOKEN = "sy-hostile-" + os.urandom(8).hex()

BAD_AUTH = [
    ("empty", b""),
    ("scheme-only", b"Bearer"),
    ("scheme-and-space", b"Bearer "),
    ("scheme-and-spaces", b"Bearer    "),
    ("basic", b"Basic " + b"dXNlcjpwYXNz"),
    ("other-scheme", b"Token " + TOKEN.encode()),
    ("no-scheme", TOKEN.encode()),
    ("tab-after-scheme", b"Bearer\t" + TOKEN.encode()),
    ("prefix-of-token", b"Bearer " + TOKEN[:-1].encode()),
    ("token-plus-a-byte", b"Bearer " + TOKEN.encode() + b"0"),
    ("token-upper-case", b"Bearer " + TOKEN.upper().encode()),
    ("two-tokens-in-one-field", b"Bearer " + TOKEN.encode() + b", Bearer x"),
    ("10-kb-token", b"Bearer " + b"x" * 10_000),
    ("obs-text-token", b"Bearer \xff\xfe" + TOKEN.encode()),
]


@pytest.fixture(scope="module")
def auth_server(module_server_factory, tmp_path_factory):
    path = tmp_path_factory.mktemp("hostile-auth") / "tokens"
    path.write_text(f"# hostile-http tokens\n{TOKEN}\n")
    return module_server_factory("--process-workers", "1", "--tokens-file", str(path), "--log-level", "trace")


def _auth_get(port, value, path=b"/v1/jobs"):
    field = b"" if value is None else b"Authorization: " + value + b"\r\n"
    return exchange(port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + field + b"Connection: close\r\n\r\n")


@pytest.mark.parametrize("value", [c[1] for c in BAD_AUTH], ids=[c[0] for c in BAD_AUTH])
def test_authorization_garbage_is_401(auth_server, value):
    ex = _auth_get(auth_server.port, value)
    body = assert_one_problem(ex, 401, "unauthorized", closes=False, what=value)
    assert ex.responses[0].headers.get("www-authenticate", "").startswith("Bearer"), ex.responses[0].headers
    assert TOKEN not in json.dumps(body)
    assert_serving(auth_server)


@pytest.mark.parametrize("order", ["valid-first", "valid-second"])
def test_two_authorization_fields_are_refused_whatever_the_order(auth_server, order):
    """Authorization is a singleton field: two of them are not a valid credential, and which one
    the server reads must not decide the outcome."""
    good, bad = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n", b"Authorization: Bearer nope\r\n"
    fields = good + bad if order == "valid-first" else bad + good
    raw = b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n" + fields + b"Connection: close\r\n\r\n"
    assert_one_problem(exchange(auth_server.port, raw), 401, "unauthorized", closes=False, what=raw)
    assert_serving(auth_server)


def test_auth_is_checked_before_the_body_is_parsed(auth_server):
    before_ok = _auth_get(auth_server.port, b"Bearer " + TOKEN.encode())
    assert statuses(before_ok) == [200]
    for path, body in ((b"/v1/jobs", b"{"), (b"/v1/jobs:batch", b"[" * DEEP), (b"/v1/jobs", b"\xff" * 100)):
        raw = post_bytes(path, body, extra=b"Authorization: Bearer wrong\r\n")
        assert_one_problem(exchange(auth_server.port, raw), 401, "unauthorized", closes=False, what=raw)
    # the scheme name is case-insensitive (RFC 9110 section 11.1) and a valid token still works
    for value in (b"bearer " + TOKEN.encode(), b"BEARER " + TOKEN.encode()):
        assert statuses(_auth_get(auth_server.port, value)) == [200], value
    assert_serving(auth_server)


def test_tokens_never_appear_in_the_server_log(auth_server):
    # presented in every place a careless log line could pick it up
    for path in (b"/v1/jobs?token=" + TOKEN.encode(), b"/v1/nope/" + TOKEN.encode()):
        _auth_get(auth_server.port, b"Bearer " + TOKEN.encode() + b"x", path=path)
    _auth_get(auth_server.port, b"Bearer " + TOKEN.encode() + b"\x01")   # a 400 from the parser
    _auth_get(auth_server.port, b"Bearer " + TOKEN.encode())
    job = post_bytes(b"/v1/jobs", b'{"type":"sleep","input":{"ms":1}}',
                     extra=b"Authorization: Bearer " + TOKEN.encode() + b"\r\nPrefer: wait=5\r\n")
    assert statuses(exchange(auth_server.port, job)) == [200]  # job lines are logged too (trace)
    assert_serving(auth_server)
    time.sleep(0.2)  # let the log reader threads catch up
    lines = auth_server.stderr_lines + auth_server.stdout_lines
    assert lines, "the server logged nothing at all (log capture broken?)"
    leaked = [l for l in lines if TOKEN in l or TOKEN[-8:] in l]
    assert not leaked, f"the token appears in the server log: {leaked[:3]}"


# --- connection level ------------------------------------------------------------------------

def _wait_closed(sock, limit):
    """Seconds until the peer closes (EOF or reset), and the bytes it sent; None if not closed."""
    t0 = time.monotonic()
    data = b""
    for _ in range(10_000):
        left = limit - (time.monotonic() - t0)
        if left <= 0:
            return None, data
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return None, data
        except ConnectionResetError:
            return time.monotonic() - t0, data
        if not chunk:
            return time.monotonic() - t0, data
        data += chunk
    return None, data


def _assert_clean_cut(data, what):
    """What a server may say when it cuts a slow client: nothing, or one 408 problem."""
    if data:
        assert data.startswith(b"HTTP/1.1 408 "), f"{what}: unexpected bytes {data[:200]!r}"


def test_slowloris_headers_are_cut_at_the_read_deadline(short):
    """One byte of header per second: the deadline covers the whole request, it is not renewed
    by each byte, so the server must hang up after about --read-timeout-ms."""
    req = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 60 + b"\r\n\r\n"
    deadline = READ_TIMEOUT_MS / 1000 + SLACK_S
    with socket.create_connection((sy.HOST, short.port), timeout=5) as s:
        t0 = time.monotonic()
        closed_after, data, sent = None, b"", 0
        for byte in req[:8]:  # at most 8 s
            try:
                s.send(bytes([byte]))
                sent += 1
            except OSError:
                closed_after = time.monotonic() - t0
                break
            closed_after, got = _wait_closed(s, 1.0)
            data += got
            if closed_after is not None:
                closed_after = time.monotonic() - t0
                break
    assert closed_after is not None, f"still connected after {sent} bytes at 1 byte/s"
    assert closed_after <= deadline, f"cut after {closed_after:.1f}s, deadline {READ_TIMEOUT_MS} ms"
    _assert_clean_cut(data, "slowloris")
    assert_serving(short)


def test_slow_body_is_cut_at_the_read_deadline(short):
    head = (b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\n" + JSON_CT + b"Content-Length: 100\r\n\r\n")
    before = short.submitted_total()
    with socket.create_connection((sy.HOST, short.port), timeout=5) as s:
        t0 = time.monotonic()
        s.sendall(head)
        closed_after, data = None, b""
        for _ in range(8):
            try:
                s.send(b" ")
            except OSError:
                closed_after = time.monotonic() - t0
                break
            closed_after, got = _wait_closed(s, 1.0)
            data += got
            if closed_after is not None:
                closed_after = time.monotonic() - t0
                break
    assert closed_after is not None and closed_after <= READ_TIMEOUT_MS / 1000 + SLACK_S, closed_after
    _assert_clean_cut(data, "slow body")
    assert short.submitted_total() == before
    assert_serving(short)


@pytest.mark.parametrize("first", [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"],
                         ids=["silent-client", "idle-keep-alive"])
def test_silent_connection_is_closed_at_the_read_deadline(short, first):
    with socket.create_connection((sy.HOST, short.port), timeout=5) as s:
        if first:
            s.sendall(first)
            f = s.makefile("rb")
            status, _, _ = sy.read_raw_response(f)
            assert status == 200
        closed_after, data = _wait_closed(s, READ_TIMEOUT_MS / 1000 + SLACK_S)
    assert closed_after is not None, "the server kept a silent connection past its read deadline"
    assert closed_after >= READ_TIMEOUT_MS / 1000 * 0.5, f"closed after only {closed_after:.2f}s"
    _assert_clean_cut(data, "silent")
    assert_serving(short)


HALF_CLOSED = [
    # (id, bytes sent before SHUT_WR, statuses expected before EOF)
    ("nothing", b"", []),
    ("partial-request-line", b"GET /heal", []),
    ("partial-headers", b"GET /healthz HTTP/1.1\r\nHost: x\r\n", []),
    ("one-request", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", [200]),
    ("two-pipelined", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /v1/nope HTTP/1.1\r\nHost: x\r\n\r\n",
     [200, 404]),
]


@pytest.mark.parametrize("data,want", [c[1:] for c in HALF_CLOSED], ids=[c[0] for c in HALF_CLOSED])
def test_half_closed_client_gets_its_answers_then_eof(short, data, want):
    ex = exchange(short.port, data, shutdown_write=True, read_for=READ_TIMEOUT_MS / 1000 + SLACK_S)
    assert statuses(ex) == want, statuses(ex)
    assert ex.closed and not ex.reset, ex
    assert ex.elapsed < 2.0, f"half-close answered in {ex.elapsed:.2f}s, should be at once"
    assert_serving(short)


def test_half_closed_client_still_gets_a_held_prefer_wait_answer(short):
    body = b'{"type":"sleep","input":{"ms":300}}'
    raw = post_bytes(b"/v1/jobs", body, extra=b"Prefer: wait=5\r\n", close=False)
    ex = exchange(short.port, raw, shutdown_write=True, read_for=5)
    assert statuses(ex) == [200], [r.body for r in ex.responses]
    assert ex.responses[0].body["status"] == "succeeded"
    assert ex.closed
    assert_serving(short)


PIPELINES = [
    # (id, requests, statuses before the server closes)
    ("garbage-third", [b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /v1/stats HTTP/1.1\r\nHost: x\r\n\r\n",
                       b"GARBAGE\x01 / HTTP/1.1\r\n\r\n", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"],
     [200, 200, 400]),
    ("bad-content-length-second", [b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                                   b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: zz\r\n\r\n",
                                   b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"], [200, 400]),
    ("bad-chunk-second", [b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", chunked_post(b"zz\r\n{}\r\n0\r\n\r\n"),
                          b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"], [200, 400]),
    ("header-too-large-second", [b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                                 _get_with(b"X-Big: " + b"a" * (MAX_HEADER + 1) + b"\r\n"),
                                 b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"], [200, 431]),
    ("422-then-garbage", [post_bytes(b"/v1/jobs", b'{"type":"nope"}', close=False), b"\x16\x03\x01\x00\r\n\r\n",
                          b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"], [422, 400]),
]


@pytest.mark.parametrize("requests,want", [c[1:] for c in PIPELINES], ids=[c[0] for c in PIPELINES])
def test_pipeline_with_a_malformed_request_answers_up_to_it_then_closes(server, requests, want):
    ex = exchange(server.port, b"".join(requests), read_for=5)
    assert statuses(ex) == want, statuses(ex)
    assert ex.closed, "the connection stayed open after a malformed pipelined request"
    assert ex.responses[-1].headers.get("connection", "").lower() == "close"
    sy.assert_problem(ex.responses[-1], want[-1])
    assert_serving(server)


def test_200_connections_beyond_max_connections(server_factory):
    """With --max-connections 8, 200 simultaneous connections: those beyond the cap get a 503
    problem with Retry-After and are closed; the ones within it are real sessions; once all
    are gone the server serves again, with all its slots back (no leaked count)."""
    cap, total = 8, 200
    s = server_factory("--process-workers", "1", "--max-connections", str(cap), "--read-timeout-ms", "5000")
    socks = []
    try:
        for _ in range(total):
            socks.append(socket.create_connection((sy.HOST, s.port), timeout=5))
        # wait until every refused connection has its answer (bounded: 5 s)
        deadline = time.monotonic() + 5
        readable = set()
        for _ in range(500):
            left = deadline - time.monotonic()
            if left <= 0 or len(readable) >= total - cap:
                break
            r, _, _ = select.select([x for x in socks if x not in readable], [], [], min(left, 0.1))
            readable.update(r)
        time.sleep(0.3)
        r, _, _ = select.select([x for x in socks if x not in readable], [], [], 0)
        readable.update(r)
        silent = [x for x in socks if x not in readable]
        assert 1 <= len(silent) <= cap, f"{len(silent)} connections held open with a cap of {cap}"
        for x in readable:
            x.settimeout(5)
            f = x.makefile("rb")
            status, headers, body = sy.read_raw_response(f)
            sy.assert_problem(sy.Response(status, headers, _decode(headers, body)), 503, "too_many_connections")
            assert headers.get("retry-after", "").isdigit(), headers
            assert f.read() == b"", "a refused connection was left open"
            f.close()
        # while the cap is taken, a newcomer is refused the same way
        sy.assert_problem(s.get("/healthz", timeout=5), 503, "too_many_connections")
        # the sessions within the cap are real: each serves a request
        for x in silent:
            x.settimeout(5)
            x.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            f = x.makefile("rb")
            assert sy.read_raw_response(f)[0] == 200
            f.close()
    finally:
        for x in socks:
            x.close()

    # every slot comes back: cap keep-alive connections at once, each serving 3 requests
    def slots_back():
        try:
            return s.get("/healthz", timeout=2).status == 200
        except OSError:
            return False
    sy.wait_until(slots_back, 5, interval=0.05, message="a free connection slot")
    time.sleep(0.2)  # the sessions of the closed sockets end as their EOF is read
    again = [socket.create_connection((sy.HOST, s.port), timeout=5) for _ in range(cap)]
    try:
        for x in again:
            f = x.makefile("rb")
            for _ in range(3):
                x.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                status, _, body = sy.read_raw_response(f)
                assert status == 200, (status, body)
            f.close()
    finally:
        for x in again:
            x.close()
    assert_serving(s)


# --- last: a normal job still runs -----------------------------------------------------------

@pytest.mark.parametrize("srv", ["server", "short"])
def test_zz_a_normal_job_still_runs_after_all_this(request, srv):
    s = request.getfixturevalue(srv)
    assert_serving(s)
    t0 = time.monotonic()
    r = s.submit("sleep", {"ms": 10}, headers={"Prefer": "wait=5"})
    assert r.status == 200, (r.status, r.body)
    assert r.body["status"] == "succeeded" and r.body["result"]["slept_ms"] >= 10, r.body
    assert time.monotonic() - t0 < 3
    assert s.alive()
