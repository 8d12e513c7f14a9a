#!/usr/bin/env python3
"""Writes the seed corpora of fuzz/corpus/<target>/. Run it again after changing a seed here;
the files it writes are committed, so the fuzzers do not need Python.

Usage: fuzz/make_seeds.py   (rewrites fuzz/corpus/ in place)
"""
import json
import pathlib
import shutil
import struct

ROOT = pathlib.Path(__file__).resolve().parent / "corpus"

# ---- fuzz_frame: frames laid out as workers/frame.hpp says (what encode_frame writes) -------

HELLO, RUN, RESULT = 1, 2, 3
JOB = bytes.fromhex("0193f1c27a4e7d3a9a435f0d7e1b2c3d")
ZERO = bytes(16)


def frame(kind, job, payload, *, magic=b"SWYD", version=1, reserved=0, length=None):
    if isinstance(payload, (dict, list)):
        payload = json.dumps(payload, separators=(",", ":"))
    if isinstance(payload, str):
        payload = payload.encode()
    n = len(payload) if length is None else length
    return magic + struct.pack("<BBHI", version, kind, reserved, n) + job + payload


def ok(result, cpu=1.25, total=10.5):
    return {"ok": True, "result": result, "cpu_ms": cpu, "cpu_total_ms": total}


def err(code, message="boom", cpu=0.5):
    return {"ok": False, "error": {"code": code, "message": message}, "cpu_ms": cpu, "cpu_total_ms": 3}


FRAMES = {
    "hello": frame(HELLO, ZERO, {"pid": 4242, "cpu_total_ms": 12.5}),
    "run_noop": frame(RUN, JOB, {"type": "noop", "input": {}}),
    "run_primes": frame(RUN, JOB, {"type": "primes", "input": {"n": 1000000}}),
    "result_ok_count": frame(RESULT, JOB, ok({"count": 78498})),
    "result_ok_empty": frame(RESULT, JOB, {"ok": True, "cpu_ms": 0}),
    "result_ok_nested": frame(RESULT, JOB, ok({"a": [1, 2.5, None, True, "x", {"b": [[]]}], "u": "caf\u00e9 \u2603"})),
    "result_ok_big_numbers": frame(RESULT, JOB, ok({"n": 18446744073709551615, "f": 1.7976931348623157e308,
                                                   "neg": -9223372036854775808}, cpu=1e-300, total=1e300)),
    "result_ok_no_total": frame(RESULT, JOB, {"ok": True, "result": [1, 2], "cpu_ms": 3}),
    "result_error": frame(RESULT, JOB, err("handler_error")),
    "result_error_no_message": frame(RESULT, JOB, {"ok": False, "error": {"code": "memory_limit"}, "cpu_ms": 1}),
    "result_error_empty_code": frame(RESULT, JOB, err("")),
    "result_error_not_object": frame(RESULT, JOB, {"ok": False, "error": "oops", "cpu_ms": 1}),
    "result_missing_cpu": frame(RESULT, JOB, {"ok": True, "result": {}}),
    "result_cpu_string": frame(RESULT, JOB, {"ok": True, "cpu_ms": "1"}),
    "result_total_string": frame(RESULT, JOB, {"ok": True, "cpu_ms": 1, "cpu_total_ms": None}),
    "result_ok_not_bool": frame(RESULT, JOB, {"ok": 1, "cpu_ms": 1}),
    "result_not_object": frame(RESULT, JOB, [True, 1]),
    "result_bad_json": frame(RESULT, JOB, '{"ok":true,"cpu_ms":1'),
    "result_duplicate_keys": frame(RESULT, JOB, '{"ok":false,"ok":true,"cpu_ms":1,"cpu_ms":2}'),
    "result_escapes": frame(RESULT, JOB, '{"ok":false,"cpu_ms":1,"error":{"code":"a\\u0000b","message":"\\ud83d\\ude00"}}'),
    "result_invalid_utf8": frame(RESULT, JOB, b'{"ok":true,"cpu_ms":1,"result":"\xff\xfe"}'),
    "result_negative_cpu": frame(RESULT, JOB, ok(None, cpu=-5, total=-1)),
    "result_wrong_type_hello": frame(HELLO, JOB, ok({})),
    "result_short_payload": frame(RESULT, JOB, ok({"count": 1}))[:-7],
    "result_long_payload": frame(RESULT, JOB, ok({"count": 1})) + b"trailing bytes",
    "length_over_payload": frame(RESULT, JOB, ok({}), length=1000),
    "length_at_cap": frame(RESULT, JOB, b"{}", length=64 << 20),
    "length_over_cap": frame(RESULT, JOB, b"{}", length=(64 << 20) + 1),
    "length_max": frame(RESULT, JOB, b"{}", length=0xFFFFFFFF),
    "bad_magic": frame(RESULT, JOB, ok({}), magic=b"SWYX"),
    "bad_version": frame(RESULT, JOB, ok({}), version=2),
    "bad_type_0": frame(0, JOB, ok({})),
    "bad_type_4": frame(4, JOB, ok({})),
    "bad_reserved": frame(RESULT, JOB, ok({}), reserved=0x0100),
    "header_only": frame(RESULT, JOB, b""),
    "truncated_header": frame(RESULT, JOB, b"")[:17],
    "empty": b"",
    "uuid_text": b"0193f1c2-7a4e-7d3a-9a43-5F0D7E1B2C3D" + b'{"ok":true,"cpu_ms":0}',
    "bare_payload_ok": json.dumps(ok({"slept_ms": 1.0})).encode(),
    "bare_payload_error": json.dumps(err("cancelled", "stopped")).encode(),
}

# ---- fuzz_request: scenario bytes, then requests separated by a line "%%" -------------------

QUEUED, RUNNING, SUCCEEDED, FAILED = range(4)
ACCEPT, QUEUE_FULL, UNAVAILABLE, DRAINING = range(4)
READY, STARTING, NOT_READY, HEALTH_DRAINING = range(4)
ID1 = "00000000-0000-0000-0000-000000000001"
ID2 = "00000000-0000-0000-0000-000000000002"
ID3 = "00000000-0000-0000-0000-000000000003"
TOKEN = "s3cret-token"
JSON = ["Content-Type: application/json"]


def scenario(tokens=False, metrics=False, health=READY, admission=ACCEPT, state=QUEUED, tight=False):
    a = int(tokens) | int(metrics) << 1 | health << 2 | admission << 4 | state << 6
    return bytes([a, int(tight)])


def req(method, target, headers=(), body=""):
    if isinstance(body, (dict, list)):
        body = json.dumps(body, separators=(",", ":"))
    head = "\n".join([f"{method} {target}", *headers])
    return f"{head}\n\n{body}"


def post(body, headers=(), target="/v1/jobs"):
    return req("POST", target, [*JSON, *headers], body)


def script(*requests, **kw):
    return scenario(**kw) + "\n%%\n".join(requests).encode("utf-8", "surrogateescape")


def job(type_, input_=None, **extra):
    out = {"type": type_}
    if input_ is not None:
        out["input"] = input_
    out.update(extra)
    return out


REQUESTS = {
    "healthz": script(req("GET", "/healthz")),
    "readyz_starting": script(req("HEAD", "/readyz"), health=STARTING),
    "readyz_not_ready": script(req("GET", "/readyz"), health=NOT_READY),
    "readyz_draining": script(req("GET", "/readyz"), health=HEALTH_DRAINING),
    "metrics_protected": script(req("GET", "/metrics"), req("GET", "/metrics", [f"Authorization: Bearer {TOKEN}"]),
                                tokens=True, metrics=True),
    "openapi": script(req("GET", "/openapi.yaml"), req("HEAD", "/v1/job-types"), req("GET", "/v1/stats")),
    "sleep": script(post(job("sleep", {"ms": 1}))),
    "sleep_wait": script(post(job("sleep", {"ms": 5}), ["Prefer: respond-async, wait=5"])),
    "sleep_wait_quoted": script(post(job("sleep", {"ms": 5}), ['Prefer: wait="0.25"; foo=bar']), tight=True),
    "hash_base64": script(post(job("hash", {"data": "aGVsbG8=", "encoding": "base64", "algorithm": "sha512",
                                            "iterations": 3}, priority=10, timeout_ms=5000))),
    "hash_bad_base64": script(post(job("hash", {"data": "a===", "encoding": "base64"}))),
    "hash_unicode": script(post(job("hash", {"data": "caf\u00e9 \u2603 \\u0000 \"q\""}))),
    "primes_process": script(post(job("primes", {"n": 10000000000}, model="process", priority=-1000))),
    "primes_thread_tight": script(post(job("primes", {"n": 10}, model="thread")), tight=True),
    "burn_auto": script(post(job("burn", {"ms": 10}, model="auto", timeout_ms=3600000))),
    "http_request": script(post(job("http.request", {"url": "http://127.0.0.1:8080/x?y=1", "method": "POST",
                                                     "headers": {"X-Trace": "abc", "Accept": "*/*"},
                                                     "body": "{}", "timeout_ms": 1000}))),
    "http_request_bad_headers": script(post(job("http.request", {"url": "ftp://example.com/",
                                                                 "headers": {"Host": "x", "a b": "c",
                                                                             "X-Crlf": "a\r\nb", "x/y~z": "1"}}))),
    "diagnostics": script(post(job("noop", {})), post(job("alloc", {"mb": 1, "hold_ms": 0})),
                          post(job("crash", {"signal": "SEGV"}, model="thread")),
                          post(job("fork", {"processes": 2})), post(job("open_files", {"count": 10})),
                          post(job("hang", {}, model="process"))),
    "idempotency": script(post(job("primes", {"n": 10}), ["Idempotency-Key: abc-123"]),
                          post('{"input":{"n":10},"type":"primes"}', ["Idempotency-Key: abc-123"]),
                          post(job("primes", {"n": 11}), ["Idempotency-Key: abc-123"]),
                          post(job("primes", {"n": 11}), ["Idempotency-Key: has space"])),
    "get_wait_delete": script(post(job("sleep", {"ms": 1})), req("GET", f"/v1/jobs/{ID1}"),
                              req("GET", f"/v1/jobs/{ID1}?wait=1.5"), req("DELETE", f"/v1/jobs/{ID1}"),
                              req("GET", f"/v1/jobs/{ID2}"), req("GET", f"/v1/jobs/{ID1}?wait=x"),
                              req("GET", f"/v1/jobs/{ID1}?wait=1&x=2")),
    "delete_running": script(post(job("primes", {"n": 10})), post(job("sleep", {"ms": 10})),
                             req("DELETE", f"/v1/jobs/{ID1}"), req("DELETE", f"/v1/jobs/{ID2}"),
                             req("DELETE", f"/v1/jobs/{ID2}"), state=RUNNING),
    "delete_finished": script(post(job("noop", {})), req("DELETE", f"/v1/jobs/{ID1}"), state=SUCCEEDED),
    "failed_jobs": script(post(job("noop")), req("GET", f"/v1/jobs/{ID1}"), req("GET", "/v1/jobs?status=failed"),
                          state=FAILED),
    "batch": script(post({"jobs": [job("sleep", {"ms": 1}), job("primes", {"n": 100}), job("noop", {})]},
                         target="/v1/jobs:batch"), req("GET", "/v1/jobs?limit=2"),
                    req("GET", f"/v1/jobs?limit=1&cursor=c1.{ID2}"), state=SUCCEEDED),
    "batch_errors": script(post({"jobs": [job("sleep", {"ms": "x"}), job("zzz"), 5, job("hash", {}, extra=1)],
                                 "other": True}, target="/v1/jobs:batch"),
                           post({"jobs": []}, target="/v1/jobs:batch"),
                           post({"jobs": {}}, target="/v1/jobs:batch"),
                           post([1], target="/v1/jobs:batch"), post({}, target="/v1/jobs:batch")),
    "batch_tight": script(post({"jobs": [job("noop", {}) for _ in range(5)]}, target="/v1/jobs:batch"),
                          post({"jobs": [job("noop", {}) for _ in range(3)]}, target="/v1/jobs:batch"),
                          tight=True),
    "batch_keyed": script(post({"jobs": [job("noop", {})]}, ["Idempotency-Key: k"], target="/v1/jobs:batch"),
                          post({"jobs": [job("noop", {})]}, ["Idempotency-Key: k"], target="/v1/jobs:batch"),
                          state=SUCCEEDED),
    "bad_json": script(post("{"), post(""), post("[1,2"), post('{"type":"sleep",}'), post("nul"),
                       post('"\\ud800"'), post("1e400")),
    "invalid_utf8": scenario() + b'POST /v1/jobs\nContent-Type: application/json\n\n{"type":"\xff"}',
    "deep_nesting": script(post("[" * 100 + "]" * 100), post('{"a":' * 70 + "1" + "}" * 70),
                           post('"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["')),
    "deep_nesting_tight": script(post({"type": "http.request", "input": {"url": "http://127.0.0.1/",
                                                                          "headers": {"a": "b"}}}),
                                 post("[[[[[[[[[]]]]]]]]]"), tight=True),
    "content_types": script(post(job("noop"), ["Content-Type: text/plain"]),
                            req("POST", "/v1/jobs", ["Content-Type: Application/JSON ; charset=utf-8"], job("noop")),
                            req("POST", "/v1/jobs", [], job("noop"))),
    "list_queries": script(post(job("sleep", {"ms": 1})), post(job("primes", {"n": 1})),
                           post(job("hash", {"data": ""})),
                           req("GET", "/v1/jobs?status=queued&type=sleep&model=thread&limit=1000"),
                           req("GET", "/v1/jobs?limit=1"), req("GET", f"/v1/jobs?cursor=c1.{ID3}&limit=1"),
                           req("GET", "/v1/jobs?cursor=c1.ZZZ"), req("GET", "/v1/jobs?limit=0")),
    "list_bad_queries": script(req("GET", "/v1/jobs?%zz"), req("GET", "/v1/jobs?x=1"),
                               req("GET", "/v1/jobs?status=done"), req("GET", "/v1/jobs?model=gpu"),
                               req("GET", "/v1/jobs?limit=1001&limit=2"), req("GET", "/v1/jobs?type=a%20b&"),
                               req("GET", f"/v1/jobs?cursor=c1.{ID1.upper()}")),
    "methods": script(req("PUT", "/v1/jobs"), req("DELETE", "/v1/jobs:batch"), req("POST", "/healthz"),
                      req("PATCH", f"/v1/jobs/{ID1}"), req("GET", "/nope"), req("GET", "/v1/jobs/"),
                      req("GET", "/v1/jobs/a/b"), req("OPTIONS", "*")),
    "tokens": script(req("GET", "/v1/stats"), req("GET", "/v1/stats", [f"Authorization: Bearer {TOKEN}"]),
                     req("GET", "/v1/stats", ["authorization: bearer   other token"]),
                     req("GET", "/v1/stats", ["Authorization: Basic czNjcmV0"]),
                     req("GET", "/nope", ["Authorization: Bearer wrong"]), req("GET", "/healthz"), tokens=True),
    "refusals": script(post(job("noop", {})), post({"jobs": [job("noop", {})]}, target="/v1/jobs:batch"),
                       admission=QUEUE_FULL),
    "unavailable": script(post(job("primes", {"n": 5})), admission=UNAVAILABLE),
    "draining": script(post(job("sleep", {"ms": 5})), req("GET", "/readyz"), admission=DRAINING,
                       health=HEALTH_DRAINING),
    "fields": script(post(job("sleep", {"ms": 1}, priority=1001)), post(job("sleep", {"ms": 1}, priority=-1001)),
                     post(job("sleep", {"ms": 1}, priority=1.0)), post(job("sleep", {"ms": 1}, timeout_ms=0)),
                     post('{"type":"sleep","input":{"ms":1},"timeout_ms":18446744073709551615}'),
                     post(job("sleep", {"ms": -1})), post(job("sleep", [])), post({"type": 5, "model": "gpu"})),
    "schema_bounds": script(post(job("sleep", {"ms": 86400001})), post(job("primes", {"n": 18446744073709551615})),
                            post(job("alloc", {"mb": 0, "hold_ms": 600001})),
                            post(job("hash", {"data": "x", "algorithm": "md5", "iterations": 0})),
                            post(job("http.request", {"url": "http://" + "a" * 9000})),
                            post(job("sleep", {"ms": 1, "extra": {"a/b": 1, "c~d": 2}}))),
    "unknown_fields": script(post({"type": "noop", "input": {}, "extra": 1, "": 3})),
}

# ---- fuzz_parsers: byte 0 chooses the parser -----------------------------------------------

LIST, CURSOR, WAIT, PREFER, BODY, ROUTE = range(6)
PARSERS = {
    "list_full": (LIST, f"status=running&type=http.request&model=process&limit=50&cursor=c1.{ID1}"),
    "list_encoded": (LIST, "type=a%2Fb&status=queued&&limit=7"),
    "list_bad": (LIST, "limit=0x10&%zz"),
    "list_plus": (LIST, "type=a+b&model=thread"),
    "cursor_ok": (CURSOR, "c1.0193f1c2-7a4e-7d3a-9a43-5f0d7e1b2c3d"),
    "cursor_upper": (CURSOR, "c1.0193F1C2-7A4E-7D3A-9A43-5F0D7E1B2C3D"),
    "cursor_short": (CURSOR, "c1.0193f1c2-7a4e-7d3a-9a43"),
    "wait_decimal": (WAIT, "1.5"),
    "wait_exponent": (WAIT, "1e308"),
    "wait_negative": (WAIT, "-0.001"),
    "wait_words": (WAIT, "inf"),
    "prefer_list": (PREFER, "respond-async, wait=10"),
    "prefer_quoted": (PREFER, 'handling=lenient; x=1, WAIT="0.125" ,wait=3'),
    "prefer_bad": (PREFER, "wait=, wait=abc, wait=-1"),
    "body_object": (BODY, "\x10" + json.dumps({"type": "sleep", "input": {"ms": 1}, "s": "[[[\"\\\"{"})),
    "body_deep": (BODY, "\x03" + "[[[[1]]]]"),
    "body_strings": (BODY, "\x02" + '["\\"[", "]]", {"\\\\": "{"}]'),
    "body_bad": (BODY, "\x40" + '{"a": [1, 2,]}'),
    "route_job": (ROUTE, f"/v1/jobs/{ID1}"),
    "route_batch": (ROUTE, "/v1/jobs:batch"),
    "route_nested": (ROUTE, "/v1/jobs/a/b"),
    "route_health": (ROUTE, "/healthz"),
}


def write(target, seeds):
    folder = ROOT / target
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for name, data in seeds.items():
        (folder / name).write_bytes(data)
    print(f"{target}: {len(seeds)} seeds")


def main():
    write("fuzz_frame", FRAMES)
    write("fuzz_request", REQUESTS)
    write("fuzz_parsers", {name: bytes([sel]) + text.encode() for name, (sel, text) in PARSERS.items()})


if __name__ == "__main__":
    main()
