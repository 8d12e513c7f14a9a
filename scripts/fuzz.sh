#!/usr/bin/env bash
# Builds the libFuzzer targets (CMake preset `fuzz`: clang-14, ASan + UBSan) and runs each one for a
# bounded time on a copy of its seed corpus (fuzz/corpus/<target>, never written to).
# Usage: scripts/fuzz.sh [seconds-per-target]    (default 60)
#   JOBS=N        build parallelism (default: the build tool's own)
# Work files: build/fuzz/corpus-work/<target> (the corpus as it grows), build/fuzz/logs/<target>.log,
# build/fuzz/artifacts/<target>/ (crash-*, leak-*, timeout-*, oom-* inputs: replay one with
# `build/fuzz/fuzz/<target> <file>`). Exits non-zero if any target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || ((seconds < 1)); then
  echo "usage: scripts/fuzz.sh [seconds-per-target]" >&2
  exit 2
fi

scripts/install-deps.sh --fuzz
cmake --preset fuzz >/dev/null
build_start=$SECONDS
cmake --build --preset fuzz ${JOBS:+-j "$JOBS"}
echo "fuzz: build took $((SECONDS - build_start)) s"

out=build/fuzz
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

failed=()
summary=()
for corpus in fuzz/corpus/*/; do
  target=$(basename "$corpus")
  binary="$out/fuzz/$target"
  if [[ ! -x "$binary" ]]; then
    echo "fuzz: no binary for $target (is it in fuzz/CMakeLists.txt?)" >&2
    failed+=("$target")
    continue
  fi
  work="$out/corpus-work/$target"
  artifacts="$out/artifacts/$target"
  log="$out/logs/$target.log"
  rm -rf "$work"
  mkdir -p "$work" "$artifacts" "$(dirname "$log")"
  cp -R "$corpus". "$work/"
  args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$artifacts/")
  [[ -f "fuzz/$target.dict" ]] && args+=(-dict="fuzz/$target.dict")

  echo "fuzz: $target for ${seconds} s ($(find "$work" -type f | wc -l) seeds)"
  status=0
  "$binary" "${args[@]}" "$work" >"$log" 2>&1 || status=$?

  # The last stats line: "#123456 DONE cov: 1588 ft: 3690 corp: 35/2606b lim: 168 exec/s: 2057 rss: 37Mb"
  last=$(grep -E '^#[0-9]+[[:space:]]+(DONE|NEW|REDUCE|pulse|INITED)' "$log" | tail -n 1 || true)
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
  ft=$(sed -nE 's/.* ft: ([0-9]+).*/\1/p' <<<"$last")
  corp=$(sed -nE 's/.* corp: ([0-9]+)\/.*/\1/p' <<<"$last")
  line="$target: ${runs:-?} executions, ${rate:-?} exec/s, coverage ${cov:-?} edges / ${ft:-?} features, corpus ${corp:-?} inputs"
  if ((status != 0)); then
    line+=" -- CRASHED (exit $status)"
    failed+=("$target")
    echo "fuzz: $target crashed; the log is $log" >&2
    grep -E 'invariant violated|^SUMMARY:|ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:' "$log" | head -n 5 >&2 || true
    grep -E 'Test unit written to' "$log" | sed 's/^/  /' >&2 || true
  fi
  echo "  $line"
  summary+=("$line")
done

echo
echo "fuzz summary (${seconds} s per target):"
printf '  %s\n' "${summary[@]}"
if ((${#failed[@]} > 0)); then
  echo "fuzz: FAILED: ${failed[*]} (inputs in $out/artifacts/)" >&2
  exit 1
fi
echo "fuzz: no crashes"
