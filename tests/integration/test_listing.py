"""GET /v1/jobs: newest first, cursor pagination, filters, retention."""

import urllib.parse

import sy_helpers as sy


def _list(server, **query):
    qs = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
    r = server.get("/v1/jobs" + (f"?{qs}" if qs else ""))
    assert r.status == 200, (query, r.status, r.body)
    assert r.headers.get_content_type() == "application/json"
    assert set(r.body) >= {"jobs", "next_cursor"}, r.body
    nc = r.body["next_cursor"]
    assert nc is None or (isinstance(nc, str) and nc), nc
    for j in r.body["jobs"]:
        sy.assert_job_resource(j)
    return r.body


def _all_pages(server, limit, max_pages=50, **filters):
    pages, cursor = [], None
    for _ in range(max_pages):
        page = _list(server, limit=limit, cursor=cursor, **filters)
        pages.append(page["jobs"])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages
    raise AssertionError(f"more than {max_pages} pages")


def _assert_newest_first(jobs):
    ids = [j["id"] for j in jobs]
    assert ids == sorted(ids, reverse=True), f"not newest first by id: {ids}"
    created = [sy.parse_ts(j["created_at"]) for j in jobs]
    assert all(a >= b for a, b in zip(created, created[1:])), "created_at increases"


def _make(server, n, type_="sleep", input_=None, **fields):
    ids = [server.submit_ok(type_, input_ if input_ is not None else {"ms": 1}, **fields)["id"]
           for _ in range(n)]
    for i in ids:
        server.wait_job(i)
    return ids


def _make_one_by_one(server, n):
    """Each job finishes before the next is submitted (retention may evict early ones)."""
    ids = []
    for _ in range(n):
        jid = server.submit_ok("sleep", {"ms": 1})["id"]
        assert server.wait_job(jid)["status"] == "succeeded"
        ids.append(jid)
    return ids


def test_pagination_newest_first(server_factory):
    s = server_factory("--process-workers", "1")
    created = _make(s, 25)
    pages = _all_pages(s, 10)
    assert [len(p) for p in pages] == [10, 10, 5]
    flat = [j for p in pages for j in p]
    ids = [j["id"] for j in flat]
    assert len(set(ids)) == 25
    assert set(ids) == set(created)
    assert ids[0] == created[-1] and ids[-1] == created[0]
    assert ids == list(reversed(created))
    _assert_newest_first(flat)

    everything = _list(s)  # default limit 100
    assert [j["id"] for j in everything["jobs"]] == ids and everything["next_cursor"] is None
    one = _list(s, limit=1)
    assert len(one["jobs"]) == 1 and one["next_cursor"] is not None
    assert len(_list(s, limit=1000)["jobs"]) == 25


def test_cursor_is_stable_when_new_jobs_arrive(server_factory):
    s = server_factory("--process-workers", "1")
    old = _make(s, 15)
    first = _list(s, limit=10)
    assert [j["id"] for j in first["jobs"]] == list(reversed(old))[:10]
    newer = _make(s, 5)
    page, cursor, seen = None, first["next_cursor"], []
    for _ in range(10):
        page = _list(s, limit=10, cursor=cursor)
        seen += [j["id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(old))[10:], "paging skipped or repeated jobs after inserts"
    assert not set(seen) & set(newer)


def test_filters(server_factory):
    s = server_factory("--process-workers", "2")
    primes = _make(s, 3, "primes", {"n": 1000})
    sleeps = _make(s, 5, "sleep", {"ms": 1})
    burns = _make(s, 2, "burn", {"ms": 5}, model="thread")
    victim = s.submit_ok("sleep", {"ms": 30000})
    s.request("DELETE", f"/v1/jobs/{victim['id']}")
    s.wait_job(victim["id"])
    timed = s.submit_ok("sleep", {"ms": 5000}, timeout_ms=50)
    s.wait_job(timed["id"])

    def ids(**f):
        jobs = [j for p in _all_pages(s, 1000, **f) for j in p]
        _assert_newest_first(jobs)
        return jobs

    got = ids(type="primes")
    assert {j["id"] for j in got} == set(primes) and all(j["type"] == "primes" for j in got)
    got = ids(model="process")
    assert {j["id"] for j in got} == set(primes)
    got = ids(model="thread")
    assert {j["id"] for j in got} == set(sleeps + burns + [victim["id"], timed["id"]])
    assert {j["id"] for j in ids(status="cancelled")} == {victim["id"]}
    assert {j["id"] for j in ids(status="timed_out")} == {timed["id"]}
    assert {j["id"] for j in ids(status="succeeded")} == set(primes + sleeps + burns)
    assert {j["id"] for j in ids(type="burn", model="thread")} == set(burns)
    assert ids(type="burn", model="process") == []
    assert ids(status="queued") == []
    assert ids(type="sleep", status="succeeded", model="thread") and \
        {j["id"] for j in ids(type="sleep", status="succeeded")} == set(sleeps)

    # paging through a filtered list
    pages = _all_pages(s, 2, type="sleep")
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    assert {j["id"] for p in pages for j in p} == set(sleeps + [victim["id"], timed["id"]])


def test_retention_evicts_oldest_finished(server_factory):
    s = server_factory("--process-workers", "1", "--retain-jobs", "5")
    ids = _make_one_by_one(s, 8)
    sy.wait_until(lambda: all(s.get(f"/v1/jobs/{i}").status == 404 for i in ids[:3]), 5,
                  interval=0.05, message="the 3 oldest finished jobs to be evicted")
    for i in ids[3:]:
        assert s.job(i)["status"] == "succeeded"
    listed = [j["id"] for j in _list(s, limit=100)["jobs"]]
    assert listed == list(reversed(ids[3:]))
    # a running job is never evicted, whatever its age
    long = s.submit_ok("sleep", {"ms": 3000})
    _make_one_by_one(s, 6)
    assert s.job(long["id"])["status"] == "running"
    s.request("DELETE", f"/v1/jobs/{long['id']}")
