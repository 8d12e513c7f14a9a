"""Writes a benchmark run's results: results.json (every run's figures, the medians, the table),
results.md (the table: scenario, ours, ceiling, ratio, goal, met?) and the PNG plots
(gnuplot, bench/plots.gp) of throughput and latency against concurrency, per model, and
(bench/plots_replicas.gp) of the speed-up from 1 to 3 replicas."""

import datetime
import json
import os
import platform
import statistics
import subprocess

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))


def _at_least(limit):
    return lambda v: v is not None and v >= limit


def _below(limit):
    return lambda v: v is not None and v < limit


def _at_most(limit):
    return lambda v: v is not None and v <= limit


# (scenario, measure, ours key, ceiling key, ratio key, goal, test of the goal on (ours, ratio))
# A ratio key names a figure taken per run against that run's ceiling; without one the ratio is
# ours / ceiling of the medians. A row without a goal is there for the comparison only.
ROWS = (
    ("1 HTTP", "GET /healthz, requests/s (wrk; ceiling: nginx)",
     "http_healthz_rps", "http_healthz_nginx_rps", "http_healthz_ratio", "≥ 0.8× nginx", ("ratio", _at_least(0.8))),
    ("1 HTTP", "POST /v1/jobs noop, no wait, requests/s (wrk; ceiling: nginx)",
     "http_post_rps", "http_post_nginx_rps", "http_post_ratio", "≥ 0.5× nginx", ("ratio", _at_least(0.5))),
    ("1 HTTP", "GET /healthz, requests/s, server with --io-threads 1 (default 2; ceiling: nginx)",
     "http_healthz_io1_rps", "http_healthz_nginx_rps", "http_healthz_io1_ratio", "", None),
    ("1 HTTP", "POST /v1/jobs noop, requests/s, server with --io-threads 1 (default 2; ceiling: nginx)",
     "http_post_io1_rps", "http_post_nginx_rps", "http_post_io1_ratio", "", None),
    ("2 Dispatch", "noop on thread, jobs/s end to end (Prefer: wait; best of the sweep)",
     "noop_thread_peak_jobs_s", None, None, "≥ 20,000", ("ours", _at_least(20000))),
    ("2 Dispatch", "noop on process, jobs/s end to end (Prefer: wait; best of the sweep)",
     "noop_process_peak_jobs_s", None, None, "≥ 10,000", ("ours", _at_least(10000))),
    ("2 Dispatch", "noop on thread, p99 end to end at 4 connections, ms",
     "noop_thread_moderate_p99_ms", None, None, "< 2 ms", ("ours", _below(2.0))),
    ("2 Dispatch", "noop on process, p99 end to end at 4 connections, ms",
     "noop_process_moderate_p99_ms", None, None, "< 2 ms", ("ours", _below(2.0))),
    ("2 Dispatch", "noop on thread, jobs/s, batches of 100 + long-poll",
     "noop_thread_batch_jobs_s", None, None, "", None),
    ("2 Dispatch", "noop on process, jobs/s, batches of 100 + long-poll",
     "noop_process_batch_jobs_s", None, None, "", None),
    ("3 CPU", "burn 10 ms × {burn10ms_jobs}, one POST with Prefer: wait per job: wall s (ceiling: bare fork); ratio = efficiency",
     "burn10ms_wall_s", "burn10ms_bare_wall_s", "burn10ms_efficiency", "≥ 0.95", ("ratio", _at_least(0.95))),
    ("3 CPU", "burn 1 ms × {burn1ms_jobs}, one POST with Prefer: wait per job: wall s (ceiling: bare fork); ratio = efficiency",
     "burn1ms_wall_s", "burn1ms_bare_wall_s", "burn1ms_efficiency", "≥ 0.95", ("ratio", _at_least(0.95))),
    ("3 CPU", "burn 10 ms × {burn10ms_jobs} in batches of 1,000, drained: server span s (ceiling: bare fork); ratio = efficiency",
     "burn10ms_batch_span_s", "burn10ms_batch_bare_wall_s", "burn10ms_batch_efficiency", "≥ 0.95", ("ratio", _at_least(0.95))),
    ("3 CPU", "burn 1 ms × {burn1ms_jobs} in batches of 1,000, drained: server span s (ceiling: bare fork); ratio = efficiency",
     "burn1ms_batch_span_s", "burn1ms_batch_bare_wall_s", "burn1ms_batch_efficiency", "≥ 0.95", ("ratio", _at_least(0.95))),
    ("3 CPU", "burn 10 ms, one POST per job: wall s (ceiling: bare fork with a pipe round trip per job)",
     "burn10ms_wall_s", "burn10ms_pipe_wall_s", "burn10ms_pipe_efficiency", "", None),
    ("3 CPU", "burn 1 ms, one POST per job: wall s (ceiling: bare fork with a pipe round trip per job)",
     "burn1ms_wall_s", "burn1ms_pipe_wall_s", "burn1ms_pipe_efficiency", "", None),
    ("3 CPU", "burn 1 ms: server CPU per job, µs, one request per job (vs batches, results read after)",
     "burn1ms_server_cpu_us", "burn1ms_batch_server_cpu_us", None, "", None),
    ("4 I/O", "10,000 × sleep 1 s in flight, wall s (ceiling: ideal + submission)",
     "io_wall_s", "io_ideal_plus_submit_s", "io_ratio", "≤ 1.2×", ("ratio", _at_most(1.2))),
    ("4 I/O", "server RSS at the peak, MB", "io_rss_peak_mb", None, None, "< 150 MB", ("ours", _below(150))),
    ("4 I/O", "server threads at the peak (ceiling: before)",
     "io_threads_max", "io_threads_before", None, "unchanged", ("ratio", lambda v: v == 1)),
    ("5 Mixed", "sleep 100 ms p99 ms, CPU workers saturated (ceiling: unloaded); ratio = added ms",
     "mixed_loaded_p99_ms", "mixed_unloaded_p99_ms", "mixed_delta_p99_ms", "≤ +10 ms", ("ratio", _at_most(10))),
    ("6 Models", "burn 10 ms, jobs/s: forced on thread (vs its process model)",
     "cmp_burn_thread_jobs_s", "cmp_burn_process_jobs_s", None, "", None),
    ("6 Models", "/healthz p99 ms while burn runs on thread (vs on process)",
     "cmp_burn_thread_healthz_p99_ms", "cmp_burn_process_healthz_p99_ms", None, "", None),
    ("6 Models", "burn 10 ms p99 end to end ms: on thread (vs on process)",
     "cmp_burn_thread_e2e_p99_ms", "cmp_burn_process_e2e_p99_ms", None, "", None),
    ("6 Models", "sleep 100 ms, jobs/s: forced on process (vs its thread model)",
     "cmp_sleep_process_jobs_s", "cmp_sleep_thread_jobs_s", None, "", None),
    ("6 Models", "sleep 100 ms p99 end to end ms: on process (vs on thread)",
     "cmp_sleep_process_e2e_p99_ms", "cmp_sleep_thread_e2e_p99_ms", None, "", None),
    ("7 Stores", "POST /v1/jobs noop requests/s (wrk): SQLite, fsync per commit (ceiling: memory store)",
     "store_sqlite_post_rps", "store_memory_post_rps", "store_sqlite_post_ratio", "≥ 0.5× memory",
     ("ratio", _at_least(0.5))),
    ("7 Stores", "noop on thread, jobs/s end to end at 16 connections: SQLite, fsync (ceiling: memory store)",
     "store_sqlite_noop_jobs_s", "store_memory_noop_jobs_s", "store_sqlite_noop_ratio", "≥ 0.5× memory",
     ("ratio", _at_least(0.5))),
    ("7 Stores", "POST /v1/jobs noop requests/s: SQLite, --sqlite-sync normal (ceiling: memory store)",
     "store_sqlite_normal_post_rps", "store_memory_post_rps", "store_sqlite_normal_post_ratio", "", None),
    ("7 Stores", "noop on thread, jobs/s end to end: SQLite, --sqlite-sync normal (ceiling: memory store)",
     "store_sqlite_normal_noop_jobs_s", "store_memory_noop_jobs_s", "store_sqlite_normal_noop_ratio", "", None),
    ("7 Stores", "POST /v1/jobs noop p99 ms: SQLite, fsync (vs memory store)",
     "store_sqlite_post_p99_ms", "store_memory_post_p99_ms", None, "", None),
    ("7 Stores", "POST /v1/jobs noop requests/s (wrk): PostgreSQL on loopback, fsync and synchronous_commit on "
     "(ceiling: memory store)", "store_postgres_post_rps", "store_memory_post_rps", "store_postgres_post_ratio", "", None),
    ("7 Stores", "noop on thread, jobs/s end to end at 16 connections: PostgreSQL, fsync on (ceiling: memory store)",
     "store_postgres_noop_jobs_s", "store_memory_noop_jobs_s", "store_postgres_noop_ratio", "", None),
    ("7 Stores", "POST /v1/jobs noop requests/s: PostgreSQL, fsync and synchronous_commit off (ceiling: memory store)",
     "store_postgres_nosync_post_rps", "store_memory_post_rps", "store_postgres_nosync_post_ratio", "", None),
    ("7 Stores", "noop on thread, jobs/s end to end: PostgreSQL, fsync off (ceiling: memory store)",
     "store_postgres_nosync_noop_jobs_s", "store_memory_noop_jobs_s", "store_postgres_nosync_noop_ratio", "", None),
    ("7 Stores", "POST /v1/jobs noop p99 ms: PostgreSQL, fsync on (vs memory store)",
     "store_postgres_post_p99_ms", "store_memory_post_p99_ms", None, "", None),
) + tuple(
    ("8 Replicas", f"{what}, {n} replica{'s' if n > 1 else ''} on PostgreSQL"
     + (f" (ceiling: {n} × 1 replica); ratio = scaling" if n > 1 else ""),
     f"rep{n}_{key}_jobs_s", f"rep{n}_{key}_ideal_jobs_s" if n > 1 else None,
     f"rep{n}_{key}_scaling" if n > 1 else None, "", None)
    for key, what in (("noop", "noop on thread, jobs/s end to end (Prefer: wait, 24 connections round-robin)"),
                      ("noop_drain", "noop on thread, jobs/s drained (batches of 100, then long-poll; server span)"),
                      ("burn", "burn 10 ms on process, 1 worker per replica, jobs/s drained (server span)"))
    for n in (1, 2, 3))


def table_rows(median, runs):
    rows = []
    for scenario, measure, ours_key, ceiling_key, ratio_key, goal, test in ROWS:
        spread_key = ratio_key or ours_key
        per_run = [run[spread_key] for run in runs if run.get(spread_key) is not None]
        ours = median.get(ours_key)
        if ours is None:
            continue  # its scenario was not run (run.sh --only)
        ceiling = median.get(ceiling_key) if ceiling_key else None
        if ratio_key:
            ratio = median.get(ratio_key)
        elif ours is not None and ceiling:
            ratio = ours / ceiling
        else:
            ratio = None
        met = None
        if test is not None:
            which, check = test
            met = bool(check(ratio if which == "ratio" else ours))
        rows.append({"scenario": scenario, "measure": measure.format(**{k: _fmt(v) for k, v in median.items()}),
                     "ours": ours, "ceiling": ceiling, "ratio": ratio, "ratio_key": ratio_key,
                     "spread": [min(per_run), max(per_run)] if per_run else None,
                     "goal": goal, "met": met})
    return rows


def _fmt(value):
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}" if value else "0"


def _fmt_ratio(row):
    if row["ratio"] is None:
        return "—"
    if row["ratio_key"] == "mixed_delta_p99_ms":
        return f"{row['ratio']:+.1f} ms"
    return _fmt_small_ratio(row["ratio"])


def _fmt_small_ratio(value):
    return f"{value:.2g}" if 0 < abs(value) < 0.01 else f"{value:.2f}"  # 0.0017, not 0.00


def _fmt_spread(row, value):
    if row["ratio_key"] == "mixed_delta_p99_ms":
        return f"{value:+.1f} ms"
    return _fmt_small_ratio(value) if row["ratio_key"] else _fmt(value)


def machine():
    model = "unknown"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        model = next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), model)
    except (OSError, subprocess.SubprocessError):
        pass
    with open("/proc/meminfo") as f:
        mem_kb = int(f.readline().split()[1])
    commit = subprocess.run(["git", "-C", BENCH_DIR, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, timeout=10).stdout.strip()
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
            "kernel": platform.release(), "commit": commit}


def sweep_medians(sweeps):
    """{(model, concurrency): (jobs/s, p50, p99)} as medians over the runs."""
    by_point = {}
    for rows in sweeps:
        for model, c, rate, p50, p99 in rows:
            by_point.setdefault((model, c), []).append((rate, p50, p99))
    order = sorted(by_point, key=lambda point: (point[0] != "thread", point[1]))
    return {k: tuple(statistics.median(col) for col in zip(*by_point[k])) for k in order}


def write_plots(out_dir, sweep):
    data = os.path.join(out_dir, "sweep.dat")
    with open(data, "w") as f:
        for model in ("thread", "process"):
            f.write(f"# {model}: concurrency jobs_per_s p50_ms p99_ms\n")
            for (m, c), (rate, p50, p99) in sweep.items():
                if m == model:
                    f.write(f"{c} {rate:.1f} {p50:.3f} {p99:.3f}\n")
            f.write("\n\n")
    subprocess.run(["gnuplot", "-e", f"datafile='{data}'; outdir='{out_dir}'", os.path.join(BENCH_DIR, "plots.gp")],
                   check=True, timeout=60)


REPLICA_WORKLOADS = (("noop", "noop end to end"), ("noop_drain", "noop drained"), ("burn", "burn 10 ms drained"))


def replica_counts(median):
    return [n for n in range(1, 10) if median.get(f"rep{n}_noop_jobs_s") is not None]


def replica_section(median):
    """Scenario 8's own tables: jobs/s against the linear ideal, and whose CPU each workload used."""
    counts = replica_counts(median)
    if not counts:
        return []
    lines = ["", "## Replicas sharing one PostgreSQL (scenario 8)", "",
             "Jobs/s for each replica count; ideal = linear growth from 1 replica (the same run); the burn",
             "ceiling of the machine is one 10 ms job per worker and core: min(replicas, cores) × 100 jobs/s.", "",
             "| replicas | " + " | ".join(f"{what} | ideal" for _, what in REPLICA_WORKLOADS)
             + " | burn: machine ceiling |", "|---:|" + "---:|---:|" * len(REPLICA_WORKLOADS) + "---:|"]
    for n in counts:
        cells = []
        for key, _ in REPLICA_WORKLOADS:
            cells += [_fmt(median.get(f"rep{n}_{key}_jobs_s")), _fmt(median.get(f"rep{n}_{key}_ideal_jobs_s"))]
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {_fmt(median.get(f'rep{n}_burn_machine_jobs_s'))} |")
    lines += ["", "Cores used while each workload ran (CPU seconds / wall seconds of the process trees: PostgreSQL",
              "with its backends, the replicas with their worker processes, the load generator), and the",
              "share of the jobs run by the least and the most busy replica:", "",
              "| replicas | workload | PostgreSQL | replicas | loadgen | jobs run per replica: min–max share |",
              "|---:|---|---:|---:|---:|---|"]
    for n in counts:
        for key, what in REPLICA_WORKLOADS:
            m = lambda f: median.get(f"rep{n}_{key}_{f}")  # noqa: E731
            lines.append(f"| {n} | {what} | {m('cores_pg'):.2f} | {m('cores_replicas'):.2f} | "
                         f"{m('cores_loadgen'):.2f} | {m('share_min'):.2f}–{m('share_max'):.2f} |")
    lines += ["", "![speed-up over 1 replica](replicas.png)"]
    return lines


def write_replica_plot(out_dir, median):
    counts = replica_counts(median)
    data = os.path.join(out_dir, "replicas.dat")
    with open(data, "w") as f:
        f.write("# replicas ideal machine_burn " + " ".join(k for k, _ in REPLICA_WORKLOADS) + " (speed-up over 1)\n")
        for n in counts:
            speedups = [median[f"rep{n}_{k}_jobs_s"] / median[f"rep1_{k}_jobs_s"] for k, _ in REPLICA_WORKLOADS]
            machine = median[f"rep{n}_burn_machine_jobs_s"] / median["rep1_burn_machine_jobs_s"]
            f.write(f"{n} {n} {machine:.3f} " + " ".join(f"{v:.3f}" for v in speedups) + "\n")
    subprocess.run(["gnuplot", "-e", f"datafile='{data}'; outdir='{out_dir}'",
                    os.path.join(BENCH_DIR, "plots_replicas.gp")], check=True, timeout=60)


def _store_runs(plan):
    runs = plan.get("store_runs", plan["runs"])
    return f" (scenarios 7 and 8: {runs})" if runs != plan["runs"] else ""


def write_markdown(path, info, rows, sweep, problems, median):
    m = info["machine"]
    lines = [
        f"# Switchyard benchmark, {info['date']}",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}; "
        f"commit {m['commit']}. Median of {info['plan']['runs']} run(s) of each scenario{_store_runs(info['plan'])}; "
        f"ratios against the ceiling measured in the same run. Whole run: {info['elapsed_s']:.0f} s.",
        "",
        "Ours and ceiling are each the median over the runs; the ratio is the median of the ratios",
        "taken in each run, so it need not equal ours / ceiling of its row. The last column is the",
        "range over the runs of the ratio (or of ours, where there is no ceiling): a wide range says",
        "the shared machine was busy with other work during some runs.",
        "Load average (1 min) at the start of each run: "
        + ", ".join(f"{run['load_average_1m']:.2f}" for run in info["runs"]) + ".",
        "",
        "| scenario | measure | ours | ceiling | ratio | goal | met? | runs: min–max |",
        "|---|---|---:|---:|---:|---|---|---|",
    ]
    for r in rows:
        met = "—" if r["met"] is None else ("yes" if r["met"] else "**no**")
        spread = "—" if r["spread"] is None else "–".join(_fmt_spread(r, v) for v in r["spread"])
        lines.append(f"| {r['scenario']} | {r['measure']} | {_fmt(r['ours'])} | {_fmt(r['ceiling'])} | "
                     f"{_fmt_ratio(r)} | {r['goal'] or '—'} | {met} | {spread} |")
    if sweep:  # scenario 2 ran
        lines += ["", "## noop jobs against concurrency (Prefer: wait, end to end)", "",
                  "| model | connections | jobs/s | p50 ms | p99 ms |", "|---|---:|---:|---:|---:|"]
        for (model, c), (rate, p50, p99) in sweep.items():
            lines.append(f"| {model} | {c} | {_fmt(rate)} | {p50:.3f} | {p99:.3f} |")
        lines += ["", "![jobs/s against concurrency](throughput.png)", "",
                  "![latency against concurrency](latency.png)"]
    lines += replica_section(median)
    lines += ["", "## Problems", ""]
    lines += [f"- {p}" for p in problems] or ["None: every job of every run ended `succeeded`."]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write(out_dir, *, plan, runs, median, sweeps, problems, elapsed_s, info=None):
    os.makedirs(out_dir, exist_ok=True)
    info = info or {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    "machine": machine(), "plan": plan, "elapsed_s": elapsed_s}
    rows = table_rows(median, runs)
    sweep = sweep_medians(sweeps)
    with open(os.path.join(out_dir, "results.json"), "w") as f:
        json.dump({**info, "table": rows, "median": median, "runs": runs, "problems": problems,
                   "sweeps": sweeps,
                   "sweep": [{"model": k[0], "concurrency": k[1], "jobs_per_s": v[0], "p50_ms": v[1], "p99_ms": v[2]}
                             for k, v in sweep.items()]}, f, indent=1)
    write_markdown(os.path.join(out_dir, "results.md"), {**info, "runs": runs}, rows, sweep, problems, median)
    if sweep:
        write_plots(out_dir, sweep)
    if replica_counts(median):
        write_replica_plot(out_dir, median)


def rerender(out_dir):
    """Writes results.md, the table in results.json and the plots again from results.json,
    after a change to this file; the measured figures are kept as they are."""
    with open(os.path.join(out_dir, "results.json")) as f:
        saved = json.load(f)
    sweeps = saved.get("sweeps") or [[(p["model"], p["concurrency"], p["jobs_per_s"], p["p50_ms"], p["p99_ms"])
                                       for p in saved["sweep"]]]
    info = {k: saved[k] for k in ("date", "machine", "plan", "elapsed_s")}
    write(out_dir, plan=saved["plan"], runs=saved["runs"], median=saved["median"], sweeps=sweeps,
          problems=saved["problems"], elapsed_s=saved["elapsed_s"], info=info)


if __name__ == "__main__":
    import sys

    rerender(sys.argv[1])  # python3 bench/report.py bench/results/<date>
