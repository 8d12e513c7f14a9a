#!/usr/bin/env bash
# Runs Switchyard's benchmark suite in one command: builds the `bench` preset (release server,
# load generator, bare-fork ceiling), runs every scenario of bench/scenarios.py against its
# ceiling (nginx, bare forked processes, the ideal wall time) and writes
# bench/results/<date>/results.md, results.json and PNG plots.
#
# Usage: bench/run.sh [--quick] [--runs N] [--out DIR] [--only 1,2,...]
#   --quick   one short run of each scenario (about 1-2 minutes on 2 cores), written to
#             bench/results/<date>-quick/; the full run (5 runs of scenarios 1-6, 3 of 7
#             and 8, medians) took 13 minutes on 2 cores (2026-12-02), plus the build.
#   --only    the scenarios with these numbers (1-8) only
# Installs `scripts/install-deps.sh --bench` (wrk, nginx, gnuplot-nox, python3, procps, linux-perf).
# Only 127.0.0.1 is ever a target. Every process started is stopped on exit, error or Ctrl-C.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
quick=()
runs=()
only=()
out=""
while (($#)); do
  case "$1" in
    --quick) quick=(--quick) ;;
    --runs) runs=(--runs "$2"); shift ;;
    --out) out="$2"; shift ;;
    --only) only=(--only "$2"); shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ -z "$out" ]]; then
  out="$root/bench/results/$(date -u +%Y-%m-%d)${quick:+-quick}"
fi

"$root/scripts/install-deps.sh" --bench

cd "$root"
nice -n 10 cmake --preset bench >/dev/null
nice -n 10 cmake --build --preset bench -j2

# The scenarios run in a child of their own; on any exit of this script it is stopped, and it
# stops the servers and load tools it started (they also die with it: PR_SET_PDEATHSIG).
child=""
cleanup() {
  if [[ -n "$child" ]] && kill -0 "$child" 2>/dev/null; then
    kill -TERM "$child" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$child" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$child" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

python3 "$root/bench/scenarios.py" --build-dir "$root/build/bench" --out "$out" "${quick[@]}" "${runs[@]}" "${only[@]}" &
child=$!
wait "$child"
