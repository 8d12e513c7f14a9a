"""/metrics (Prometheus 0.0.4) and /v1/stats counts on a fresh server with known traffic."""

import re
import time
import uuid

import pytest

import sy_helpers as sy

N_PRIMES = 3  # run on model process
N_SLEEPS = 4  # run on model thread

CONTRACT = {
    "switchyard_jobs_submitted_total": "counter",
    "switchyard_jobs_completed_total": "counter",
    "switchyard_job_run_seconds": "histogram",
    "switchyard_job_queue_seconds": "histogram",
    "switchyard_job_cpu_seconds_total": "counter",
    "switchyard_jobs_queued": "gauge",
    "switchyard_jobs_running": "gauge",
    "switchyard_workers": "gauge",
    "switchyard_workers_busy": "gauge",
    "switchyard_worker_restarts_total": "counter",
    "switchyard_throughput_jobs_per_second": "gauge",
    "switchyard_http_requests_total": "counter",
    "switchyard_http_request_duration_seconds": "histogram",
    "process_cpu_seconds_total": "counter",
    "process_resident_memory_bytes": "gauge",
    "process_open_fds": "gauge",
    "process_start_time_seconds": "gauge",
}
UUIDISH = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}")


@pytest.fixture(scope="module")
def ms(module_server_factory):
    return module_server_factory("--process-workers", "2")


@pytest.fixture(scope="module")
def ran(ms):
    """The only jobs this server ever runs: N_PRIMES primes and N_SLEEPS sleeps."""
    jobs = [ms.submit_ok("primes", {"n": 200000}) for _ in range(N_PRIMES)]
    jobs += [ms.submit_ok("sleep", {"ms": 20}) for _ in range(N_SLEEPS)]
    finals = [ms.wait_job(j["id"]) for j in jobs]
    assert all(f["status"] == "succeeded" for f in finals), finals
    ms.wait_idle()
    return finals


def _metrics_response(ms):
    r = ms.get("/metrics")
    assert r.status == 200
    return r


def test_content_type_and_format(ms, ran):
    r = _metrics_response(ms)
    ctype = (r.headers.get("Content-Type") or "").replace(" ", "").lower()
    assert ctype.startswith("text/plain"), ctype
    assert "version=0.0.4" in ctype, ctype
    samples, types = sy.parse_metrics(r.body)  # raises on any malformed line
    assert samples and types


def test_every_contract_metric_is_exposed(ms, ran):
    samples, types = ms.metrics()
    for name, kind in CONTRACT.items():
        assert types.get(name) == kind, f"# TYPE {name} {kind} missing (got {types.get(name)})"
    names = {n for n, _, _ in samples}
    for name, kind in CONTRACT.items():
        if name == "switchyard_worker_restarts_total":
            continue  # no restart has happened on this server; the family is declared above
        wanted = {name + "_bucket", name + "_sum", name + "_count"} if kind == "histogram" \
            else {name}
        assert wanted <= names, f"no samples for {name}"


def test_job_counters_match_jobs_run(ms, ran):
    samples, _ = ms.metrics()
    m = lambda name, **l: sy.metric_sum(samples, name, **l)  # noqa: E731
    assert m("switchyard_jobs_completed_total", model="process", type="primes",
             status="succeeded") == N_PRIMES
    assert m("switchyard_jobs_completed_total", model="thread", type="sleep",
             status="succeeded") == N_SLEEPS
    assert m("switchyard_jobs_completed_total") == N_PRIMES + N_SLEEPS
    assert m("switchyard_jobs_submitted_total", model="process", type="primes") == N_PRIMES
    assert m("switchyard_jobs_submitted_total", model="thread", type="sleep") == N_SLEEPS
    assert m("switchyard_jobs_submitted_total") == N_PRIMES + N_SLEEPS

    assert m("switchyard_job_run_seconds_count", model="process", type="primes") == N_PRIMES
    assert m("switchyard_job_run_seconds_bucket", model="process", type="primes",
             le="+Inf") == N_PRIMES
    assert m("switchyard_job_run_seconds_sum", model="process", type="primes") > 0
    assert m("switchyard_job_run_seconds_count", model="thread", type="sleep") == N_SLEEPS
    assert m("switchyard_job_run_seconds_sum", model="thread", type="sleep") >= \
        N_SLEEPS * 0.018
    assert m("switchyard_job_queue_seconds_count", model="process") == N_PRIMES
    assert m("switchyard_job_queue_seconds_count", model="thread") == N_SLEEPS
    assert m("switchyard_job_cpu_seconds_total", model="process", type="primes") > 0

    assert m("switchyard_workers", model="process") == 2
    for model in ("thread", "process"):
        assert m("switchyard_jobs_queued", model=model) == 0
        assert m("switchyard_jobs_running", model=model) == 0
        assert m("switchyard_workers_busy", model=model) == 0
        for window in ("10s", "1m"):
            v = m("switchyard_throughput_jobs_per_second", model=model, window=window)
            assert v is not None and v >= 0, (model, window)
        assert m("switchyard_throughput_jobs_per_second", model=model, window="1m") > 0


def test_histogram_buckets_are_cumulative(ms, ran):
    samples, _ = ms.metrics()
    series = {}
    for name, labels, value in samples:
        if name.endswith("_bucket"):
            key = (name, tuple(sorted((k, v) for k, v in labels.items() if k != "le")))
            series.setdefault(key, []).append((float(labels["le"]), value))
    assert series
    for key, buckets in series.items():
        buckets.sort()
        assert buckets[-1][0] == float("inf"), f"{key} has no +Inf bucket"
        counts = [c for _, c in buckets]
        assert counts == sorted(counts), f"{key} buckets are not cumulative: {buckets}"
        count = sy.metric_sum(samples, key[0][:-len("_bucket")] + "_count", **dict(key[1]))
        assert count == counts[-1], key


def test_stats_counts_match_jobs_run(ms, ran):
    st = ms.stats()
    assert st["uptime_s"] > 0
    p, t = st["models"]["process"], st["models"]["thread"]
    assert (p["submitted"], p["succeeded"]) == (N_PRIMES, N_PRIMES), p
    assert (t["submitted"], t["succeeded"]) == (N_SLEEPS, N_SLEEPS), t
    for m in (p, t):
        assert m["failed"] == m["cancelled"] == m["timed_out"] == 0, m
        assert m["queued"] == m["running"] == m["busy"] == 0, m
        assert m["throughput_1m"] > 0, m
    assert p["workers"] == 2


def test_route_label_is_the_template(ms, ran):
    ids = [j["id"] for j in ran[:3]]
    for i in ids:
        assert ms.get(f"/v1/jobs/{i}").status == 200
    unknown = str(uuid.uuid4())
    assert ms.get(f"/v1/jobs/{unknown}").status == 404
    raw_path = f"/no/such/{uuid.uuid4().hex}"
    assert ms.get(raw_path).status == 404

    text = _metrics_response(ms).body
    samples, _ = sy.parse_metrics(text)
    got = sy.metric_sum(samples, "switchyard_http_requests_total", method="GET",
                        route="/v1/jobs/{id}", code="200")
    assert got is not None and got >= len(ids), got
    got404 = sy.metric_sum(samples, "switchyard_http_requests_total", method="GET",
                           route="/v1/jobs/{id}", code="404")
    assert got404 is not None and got404 >= 1
    assert sy.metric_sum(samples, "switchyard_http_request_duration_seconds_count",
                         route="/v1/jobs/{id}") >= len(ids) + 1
    for i in ids + [unknown, raw_path, raw_path.rsplit("/", 1)[1]]:
        assert i not in text, f"{i} leaked into /metrics"
    for name, labels, _ in samples:
        for k, v in labels.items():
            assert not UUIDISH.search(v), f"id-like label value {name}{{{k}={v!r}}}"


def test_no_server_errors_recorded(ms, ran):
    samples, _ = ms.metrics()
    bad = [(labels, v) for n, labels, v in samples
           if n == "switchyard_http_requests_total" and labels.get("code", "").startswith("5")
           and labels.get("code") != "503" and v > 0]
    assert not bad, bad


def test_process_metrics(ms, ran):
    samples, _ = ms.metrics()
    m = lambda name: sy.metric_sum(samples, name)  # noqa: E731
    uptime = ms.stats()["uptime_s"]
    assert abs(m("process_start_time_seconds") - (time.time() - uptime)) < 30
    assert m("process_open_fds") > 0
    assert m("process_resident_memory_bytes") > 1_000_000
    assert m("process_cpu_seconds_total") >= 0
