#!/usr/bin/env python3
"""The benchmark scenarios of issue 4, each measured against its ceiling in the same run.

Called by bench/run.sh (which builds the binaries first). Each scenario is a function that runs
once and returns a flat dict of figures; main() runs every scenario --runs times (scenarios 7
and 8, which start databases and several servers, Plan.store_runs times), takes the
median of each figure (ratios are taken per run, against the ceiling of that same run, then the
median), and hands everything to report.py. A load tool that reports a job not `succeeded`
is recorded under "problems" and shown in results.md, never dropped.
"""

import argparse
import contextlib
import os
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass

import harness
import report
from harness import Nginx, Postgres, ProcSampler, Switchyard, cpu_seconds, tree_cpu_s, wrk

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
# A busy machine: big queues so that admission never refuses a benchmark's jobs.
SERVER_FLAGS = ("--queue-limit", "1000000", "--retain-jobs", "20000", "--max-connections", "20000",
                "--thread-concurrency", "20000", "--drain-grace-ms", "1000")


@dataclass
class Plan:
    """How long and how often; --quick shrinks durations and counts, never the scenarios."""
    runs: int = 5
    store_runs: int = 3  # scenarios 7 and 8: about 40 s a run each, so each stays near 2 minutes
    wrk_s: int = 5
    wrk_connections: int = 32
    sweep: tuple = (1, 4, 16, 64, 256)
    sweep_jobs: int = 50000
    sweep_s: float = 3.0
    moderate_concurrency: int = 4
    cpu_batches: tuple = ((400, 10), (4000, 1))  # (jobs, burn ms)
    io_jobs: int = 10000
    io_sleep_ms: int = 1000
    mixed_s: float = 4.0
    compare_s: float = 3.0
    replica_counts: tuple = (1, 2, 3)
    replica_connections: int = 24  # in all, spread over the replicas: the same offered load for each count
    replica_s: float = 2.0
    replica_noop_jobs: int = 8000
    replica_burn_jobs: int = 200

    @classmethod
    def quick(cls):
        return cls(runs=1, store_runs=1, wrk_s=2, sweep=(1, 4, 16, 64), sweep_jobs=10000, sweep_s=1.0, cpu_batches=((100, 10), (1000, 1)),
                   mixed_s=2.0, compare_s=1.5, replica_s=1.0, replica_noop_jobs=2000, replica_burn_jobs=100)


class Context:
    def __init__(self, tools, plan):
        self.tools, self.plan = tools, plan
        self.cores = os.cpu_count() or 1
        self.problems = []
        self.sweep_rows = []  # one run's (model, concurrency, jobs/s, p50, p99)

    def check(self, label, result):
        """Records a load run whose jobs did not all succeed (or whose requests failed)."""
        if not result.get("ok", False):
            counts = result.get("jobs", {}).get("by_status") or result.get("http", {}).get("by_code")
            self.problems.append(f"{label}: {counts}")
        return result


def e2e(result, key="p99"):
    return result["latency_ms"]["end_to_end"][key]


def check_wrk(ctx, label, result):
    """Records a wrk run that got answers other than 2xx or lost connections."""
    if result["non_2xx"] or result["socket_errors"]:
        ctx.problems.append(f"{label}: {result['non_2xx']} non-2xx, {result['socket_errors']} socket errors "
                            f"({result.get('socket_error_kinds', '')}; max latency {result.get('max_ms')} ms, "
                            f"{result['rps']:.0f} requests/s)")


def scenario_http(ctx):
    """1. GET /healthz and POST /v1/jobs (noop, no wait) with wrk, against nginx."""
    post_lua = os.path.join(BENCH_DIR, "post_noop.lua")
    p = ctx.plan
    figures = {}
    measured = []
    # Both servers up at once, so that each of our figures is taken right after its ceiling. The
    # same server with one io thread instead of the default two follows, for the comparison (on
    # 2 cores shared with wrk, waking each other across the cores costs two threads much); it starts
    # after the first has stopped, whose process workers are still running the noop jobs that
    # the POSTs queued.
    with Nginx(workers=ctx.cores) as nginx:
        paths = (("healthz", "/healthz", None), ("post", "/v1/jobs", post_lua))
        with Switchyard(ctx.tools.switchyard, SERVER_FLAGS) as sy:
            for name, path, script in paths:
                ceiling = wrk(f"http://127.0.0.1:{nginx.port}{path}", p.wrk_connections, p.wrk_s, script)
                ours = wrk(f"http://127.0.0.1:{sy.port}{path}", p.wrk_connections, p.wrk_s, script)
                measured.append((name, ours, ceiling))
        with Switchyard(ctx.tools.switchyard, SERVER_FLAGS + ("--io-threads", "1")) as single:
            for (name, path, script), (_, _, ceiling) in zip(paths, measured):
                one_thread = wrk(f"http://127.0.0.1:{single.port}{path}", p.wrk_connections, p.wrk_s, script)
                figures[f"http_{name}_io1_rps"] = one_thread["rps"]
                figures[f"http_{name}_io1_ratio"] = one_thread["rps"] / ceiling["rps"]
                check_wrk(ctx, f"wrk {name}, --io-threads 1", one_thread)
    for name, ours, ceiling in measured:
        figures[f"http_{name}_rps"] = ours["rps"]
        figures[f"http_{name}_nginx_rps"] = ceiling["rps"]
        figures[f"http_{name}_ratio"] = ours["rps"] / ceiling["rps"]
        figures[f"http_{name}_p99_ms"] = ours["p99"]
        figures[f"http_{name}_nginx_p99_ms"] = ceiling["p99"]
        check_wrk(ctx, f"wrk {name}", ours)
    return figures


def scenario_dispatch(ctx):
    """2. noop jobs submitted with Prefer: wait, end to end, per model, over a concurrency sweep."""
    p = ctx.plan
    figures = {}
    ctx.sweep_rows = []
    with Switchyard(ctx.tools.switchyard, SERVER_FLAGS) as sy:
        for model in ("thread", "process"):
            best = 0.0
            for c in p.sweep:
                r = ctx.check(f"noop {model} c={c}", ctx.tools.loadgen(
                    sy.port, "--type", "noop", "--model", model, "-c", c, "-n", p.sweep_jobs,
                    "-d", p.sweep_s, "--prefer-wait", 10))
                rate = r["jobs"]["per_s"]
                best = max(best, rate)
                ctx.sweep_rows.append((model, c, rate, e2e(r, "p50"), e2e(r, "p99")))
                figures[f"noop_{model}_c{c}_jobs_s"] = rate
                figures[f"noop_{model}_c{c}_p99_ms"] = e2e(r)
            figures[f"noop_{model}_peak_jobs_s"] = best
            figures[f"noop_{model}_moderate_p99_ms"] = figures[f"noop_{model}_c{p.moderate_concurrency}_p99_ms"]
            r = ctx.check(f"noop {model} batch", ctx.tools.loadgen(
                sy.port, "--type", "noop", "--model", model, "-c", 4, "--batch", 100, "-n", p.sweep_jobs,
                "-d", p.sweep_s))
            figures[f"noop_{model}_batch_jobs_s"] = r["jobs"]["per_s"]
    return figures


def scenario_cpu(ctx):
    """3. burn jobs on the process model (one worker per core) against bare forked processes.

    Two ways to submit the same jobs: one POST with `Prefer: wait` per job from 4 connections
    per core (every job pays an HTTP round trip on the same cores as the burns), and batches of
    1,000 from one connection (`--submit-first`; the results are read after the server has
    drained them, and the wall time is the server's span from the first job created to the last
    finished). Each is bracketed in time by a bare-fork ceiling before and after it."""
    figures = {}
    with Switchyard(ctx.tools.switchyard, SERVER_FLAGS + ("--process-workers", str(ctx.cores))) as sy:
        for jobs, ms in ctx.plan.cpu_batches:
            key = f"burn{ms}ms"
            burn = ("--type", "burn", "--input", f'{{"ms":{ms}}}', "-n", jobs)

            def bare():
                return ctx.tools.bare_fork("--procs", ctx.cores, "--jobs", jobs, "--ms", ms, "--mode", "static")["wall_s"]

            before = bare()
            cpu_start = cpu_seconds(sy.pid)
            r = ctx.check(f"burn {ms} ms x{jobs}", ctx.tools.loadgen(sy.port, *burn, "-c", 4 * ctx.cores,
                                                                     "--prefer-wait", 60))
            cpu_single = cpu_seconds(sy.pid) - cpu_start
            between = bare()
            cpu_start = cpu_seconds(sy.pid)
            b = ctx.check(f"burn {ms} ms x{jobs} in batches", ctx.tools.loadgen(
                sy.port, *burn, "-c", 1, "--batch", 1000, "--submit-first", "--read-last-first", "--poll-wait", 30))
            cpu_batch = cpu_seconds(sy.pid) - cpu_start
            after = bare()
            piped = ctx.tools.bare_fork("--procs", ctx.cores, "--jobs", jobs, "--ms", ms, "--mode", "pipe")
            # Each ceiling is the mean of the bare runs just before and after the run it
            # measures, so that a load on the shared machine that rises or falls during the
            # scenario weighs on both sides alike.
            bare_single, bare_batch = (before + between) / 2, (between + after) / 2
            span = b["server_span_s"] if b["server_span_s"] is not None else b["elapsed_s"]
            figures[f"{key}_jobs"] = jobs
            figures[f"{key}_wall_s"] = r["elapsed_s"]
            figures[f"{key}_bare_wall_s"] = bare_single
            figures[f"{key}_efficiency"] = bare_single / r["elapsed_s"]
            figures[f"{key}_pipe_wall_s"] = piped["wall_s"]
            figures[f"{key}_pipe_efficiency"] = piped["wall_s"] / r["elapsed_s"]
            figures[f"{key}_server_cpu_us"] = cpu_single / jobs * 1e6
            figures[f"{key}_batch_span_s"] = span
            figures[f"{key}_batch_bare_wall_s"] = bare_batch
            figures[f"{key}_batch_efficiency"] = bare_batch / span
            figures[f"{key}_batch_server_cpu_us"] = cpu_batch / jobs * 1e6
    return figures


def scenario_io(ctx):
    """4. 10,000 sleep jobs of 1 s in flight at once: wall vs ideal, RSS and threads from /proc."""
    p = ctx.plan
    with Switchyard(ctx.tools.switchyard, SERVER_FLAGS) as sy:
        sampler = ProcSampler(sy.pid)
        rss_before_kb, threads_before = sampler.read()
        sampler.start()
        try:
            # Ten batches of 1,000 put every job in flight within a fraction of the sleep; then
            # 200 connections long-poll them all.
            r = ctx.check("io sleep", ctx.tools.loadgen(
                sy.port, "--type", "sleep", "--input", f'{{"ms":{p.io_sleep_ms}}}', "-n", p.io_jobs,
                "--batch", 1000, "-c", 200, "--submit-first", "--poll-wait", 30))
        finally:
            sampler.finish()
    ideal_s = p.io_jobs * p.io_sleep_ms / 1000 / p.io_jobs  # total wait / concurrency
    wall_s = r["server_span_s"] if r["server_span_s"] is not None else r["elapsed_s"]
    return {
        "io_wall_s": wall_s,
        "io_client_wall_s": r["elapsed_s"],
        "io_submit_s": r["submit_phase_s"],
        "io_ideal_s": ideal_s,
        "io_ideal_plus_submit_s": ideal_s + r["submit_phase_s"],
        "io_ratio": wall_s / (ideal_s + r["submit_phase_s"]),
        "io_rss_before_mb": rss_before_kb / 1024,
        "io_rss_peak_mb": sampler.peak_rss_kb / 1024,
        "io_threads_before": threads_before,
        "io_threads_max": sampler.max_threads,
    }


def sleep_probe(ctx, port, seconds):
    return ctx.check("sleep 100 ms probe", ctx.tools.loadgen(
        port, "--type", "sleep", "--input", '{"ms":100}', "-c", 16, "-n", 100000, "-d", seconds,
        "--prefer-wait", 10))


def scenario_mixed(ctx):
    """5. sleep 100 ms p99, unloaded and while burn jobs keep every CPU worker busy."""
    s = ctx.plan.mixed_s
    with Switchyard(ctx.tools.switchyard, SERVER_FLAGS) as sy:
        unloaded = sleep_probe(ctx, sy.port, s)
        burner = ctx.tools.loadgen_async(sy.port, "--type", "burn", "--input", '{"ms":50}', "-c", 4 * ctx.cores,
                                         "-n", 100000, "-d", s + 2, "--prefer-wait", 30)
        time.sleep(1.0)  # let the process queue fill
        busy = sy.stats()["models"]["process"]
        loaded = sleep_probe(ctx, sy.port, s)
        burn = ctx.check("burn background", ctx.tools.collect(burner))
    return {
        "mixed_unloaded_p99_ms": e2e(unloaded),
        "mixed_loaded_p99_ms": e2e(loaded),
        "mixed_delta_p99_ms": e2e(loaded) - e2e(unloaded),
        "mixed_workers_busy": busy["busy"] / max(busy["workers"], 1),
        "mixed_burn_jobs_s": burn["jobs"]["per_s"],
    }


COMPARISONS = (  # (name, type, input, model, concurrency)
    ("burn_process", "burn", '{"ms":10}', "process", 8),
    ("burn_thread", "burn", '{"ms":10}', "thread", 8),
    ("sleep_thread", "sleep", '{"ms":100}', "thread", 64),
    ("sleep_process", "sleep", '{"ms":100}', "process", 64),
)


def scenario_models(ctx):
    """6. burn and sleep on their own model and forced onto the other, with a /healthz probe."""
    s = ctx.plan.compare_s
    figures = {}
    with Switchyard(ctx.tools.switchyard, SERVER_FLAGS) as sy:
        for name, job_type, job_input, model, c in COMPARISONS:
            probe = ctx.tools.loadgen_async(sy.port, "--plain", "GET", "--path", "/healthz", "-c", 1,
                                            "--interval-ms", 10, "-n", 100000, "-d", s)
            r = ctx.check(f"compare {name}", ctx.tools.loadgen(
                sy.port, "--type", job_type, "--input", job_input, "--model", model, "-c", c, "-n", 100000,
                "-d", s, "--prefer-wait", 60))
            health = ctx.check(f"healthz probe {name}", ctx.tools.collect(probe))
            figures[f"cmp_{name}_jobs_s"] = r["jobs"]["per_s"]
            figures[f"cmp_{name}_e2e_p99_ms"] = e2e(r)
            figures[f"cmp_{name}_healthz_p99_ms"] = health["latency_ms"]["request"]["p99"]
    return figures


# (name, store, flags, PostgreSQL durability: None without a database, else fsync & co. on or off)
STORES = (("memory", "memory", (), None),
          ("sqlite", "sqlite", ("--sqlite-sync", "full"), None),
          ("sqlite_normal", "sqlite", ("--sqlite-sync", "normal"), None),
          ("postgres", "postgres", (), True),
          ("postgres_nosync", "postgres", (), False))


def scenario_stores(ctx):
    """7. The durable stores (issue 6): submissions and noop jobs end to end, SQLite and PostgreSQL against memory."""
    p = ctx.plan
    post_lua = os.path.join(BENCH_DIR, "post_noop.lua")
    figures = {}
    for name, store, flags, durable in STORES:
        with contextlib.ExitStack() as stack:
            if durable is not None:  # a fresh PostgreSQL on loopback for this store alone
                flags = flags + ("--database-url", stack.enter_context(Postgres(durable=durable)).url)
            sy = stack.enter_context(Switchyard(ctx.tools.switchyard, SERVER_FLAGS, store=store, store_flags=flags))
            # End to end first: wrk's submissions below leave a backlog of queued jobs behind.
            r = ctx.check(f"noop thread store {name}", ctx.tools.loadgen(
                sy.port, "--type", "noop", "--model", "thread", "-c", 16, "-n", p.sweep_jobs,
                "-d", p.sweep_s, "--prefer-wait", 10))
            posted = wrk(f"http://127.0.0.1:{sy.port}/v1/jobs", p.wrk_connections, p.wrk_s, post_lua)
            check_wrk(ctx, f"wrk store {name}", posted)
        figures[f"store_{name}_post_rps"] = posted["rps"]
        figures[f"store_{name}_post_p99_ms"] = posted["p99"]
        figures[f"store_{name}_noop_jobs_s"] = r["jobs"]["per_s"]
        figures[f"store_{name}_noop_p99_ms"] = e2e(r)
    for name, *_ in STORES[1:]:
        figures[f"store_{name}_post_ratio"] = figures[f"store_{name}_post_rps"] / figures["store_memory_post_rps"]
        figures[f"store_{name}_noop_ratio"] = figures[f"store_{name}_noop_jobs_s"] / figures["store_memory_noop_jobs_s"]
    return figures


# Each replica has one worker process, so that a replica count is also a count of CPU workers.
REPLICA_FLAGS = SERVER_FLAGS + ("--process-workers", "1")
BURN_MS = 10


def replica_workloads(p):
    """(name, model, loadgen arguments, whether the rate is the server's drain rate) of scenario 8."""
    return (
        # Each connection one job at a time with Prefer: wait: jobs/s as a client sees them.
        ("noop", "thread", ("--type", "noop", "--model", "thread", "-c", p.replica_connections,
                            "-n", p.sweep_jobs, "-d", p.replica_s, "--prefer-wait", 10), False),
        # Batches of 100 submitted first, then every job long-polled: jobs / (first created_at to
        # last finished_at), what the replicas drain from the shared queue.
        ("noop_drain", "thread", ("--type", "noop", "--model", "thread", "--batch", 100, "--submit-first",
                                  "-c", 6, "-n", p.replica_noop_jobs, "--poll-wait", 10), True),
        ("burn", "process", ("--type", "burn", "--input", f'{{"ms":{BURN_MS}}}', "--model", "process",
                             "--batch", 100, "--submit-first", "-c", 6, "-n", p.replica_burn_jobs,
                             "--poll-wait", 30), True),
    )


def measure_replicas(ctx, pg, replicas, key):
    """Scenario 8's workloads on these replicas: jobs/s, where the jobs ran, and whose CPU was used."""
    figures = {}
    ports = [r.port for r in replicas]
    for name, model, args, drain in replica_workloads(ctx.plan):
        ran_before = [r.stats()["models"][model]["succeeded"] for r in replicas]
        cpu_before = (tree_cpu_s(pg.pid), tree_cpu_s(*(r.pid for r in replicas)))
        started = time.monotonic()
        out = ctx.check(f"{name} on {len(replicas)} replica(s)", ctx.tools.loadgen(ports, *args))
        wall_s = time.monotonic() - started
        cpu_after = (tree_cpu_s(pg.pid), tree_cpu_s(*(r.pid for r in replicas)))
        ran = [s.stats()["models"][model]["succeeded"] - b for s, b in zip(replicas, ran_before)]
        span = out["server_span_s"]
        figures[f"{key}_{name}_jobs_s"] = out["jobs"]["terminal"] / span if drain and span else out["jobs"]["per_s"]
        figures[f"{key}_{name}_p50_ms"] = e2e(out, "p50")
        figures[f"{key}_{name}_cores_pg"] = (cpu_after[0] - cpu_before[0]) / wall_s
        figures[f"{key}_{name}_cores_replicas"] = (cpu_after[1] - cpu_before[1]) / wall_s
        figures[f"{key}_{name}_cores_loadgen"] = out["client_cpu_s"] / wall_s
        figures[f"{key}_{name}_share_min"] = min(ran) / max(sum(ran), 1)
        figures[f"{key}_{name}_share_max"] = max(ran) / max(sum(ran), 1)
    return figures


def scenario_replicas(ctx):
    """8. Replicas sharing one PostgreSQL (issue 6): noop and burn jobs/s on 1, 2 and 3 replicas."""
    figures = {}
    with Postgres(durable=True) as pg:
        for n in ctx.plan.replica_counts:
            with contextlib.ExitStack() as stack:
                # One at a time: each applies the schema migrations at start-up.
                replicas = [stack.enter_context(Switchyard(ctx.tools.switchyard, REPLICA_FLAGS, store="postgres",
                                                           store_flags=("--database-url", pg.url)))
                            for _ in range(n)]
                figures.update(measure_replicas(ctx, pg, replicas, f"rep{n}"))
            pg.reset()  # the next count starts from empty tables, as this one did
    first = ctx.plan.replica_counts[0]
    for n in ctx.plan.replica_counts[1:]:
        for name, *_ in replica_workloads(ctx.plan):
            ideal = figures[f"rep{first}_{name}_jobs_s"] * n / first  # linear growth
            figures[f"rep{n}_{name}_ideal_jobs_s"] = ideal
            figures[f"rep{n}_{name}_scaling"] = figures[f"rep{n}_{name}_jobs_s"] / ideal
    for n in ctx.plan.replica_counts:  # what the machine can burn: one worker per replica, at most one per core
        figures[f"rep{n}_burn_machine_jobs_s"] = min(n, ctx.cores) * 1000 / BURN_MS
    return figures


SCENARIOS = (scenario_http, scenario_dispatch, scenario_cpu, scenario_io, scenario_mixed, scenario_models,
             scenario_stores, scenario_replicas)
STORE_SCENARIOS = (scenario_stores, scenario_replicas)  # run Plan.store_runs times


def median_figures(runs):
    keys = sorted({k for run in runs for k in run})
    out = {}
    for k in keys:
        values = [run[k] for run in runs if run.get(k) is not None]
        out[k] = statistics.median(values) if values else None
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build-dir", required=True)
    parser.add_argument("--out", required=True, help="results directory")
    parser.add_argument("--quick", action="store_true", help="one short run of each scenario")
    parser.add_argument("--runs", type=int, help="runs of each scenario, 7 and 8 included (median taken)")
    parser.add_argument("--only", help="comma-separated scenario numbers (1-8) to run; default all")
    args = parser.parse_args()
    # SIGTERM (run.sh's cleanup) unwinds like Ctrl-C, so the finally below stops every server:
    # nginx's workers would outlive a master that died without telling them.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = Plan.quick() if args.quick else Plan()
    if args.runs:
        plan.runs = plan.store_runs = args.runs
    ctx = Context(harness.Tools(args.build_dir), plan)
    chosen = SCENARIOS
    if args.only:
        wanted = {int(n) for n in args.only.split(",")}
        chosen = tuple(s for i, s in enumerate(SCENARIOS, 1) if i in wanted)
    started = time.monotonic()
    runs, sweeps = [], []
    try:
        for i in range(max(plan.store_runs if s in STORE_SCENARIOS else plan.runs for s in chosen)):
            figures = {"load_average_1m": os.getloadavg()[0]}  # how busy the shared machine was
            for scenario in chosen:
                times = plan.store_runs if scenario in STORE_SCENARIOS else plan.runs
                if i >= times:
                    continue
                print(f"run {i + 1}/{times}: {scenario.__doc__.splitlines()[0]}", flush=True)
                figures.update(scenario(ctx))
            runs.append(figures)
            sweeps.append(ctx.sweep_rows)
    finally:
        harness.stop_all()
    report.write(args.out, plan=asdict(plan), runs=runs, median=median_figures(runs), sweeps=sweeps,
                 problems=ctx.problems, elapsed_s=time.monotonic() - started)
    print(f"results in {args.out} ({time.monotonic() - started:.0f} s)")
    return 1 if ctx.problems else 0


if __name__ == "__main__":
    sys.exit(main())
