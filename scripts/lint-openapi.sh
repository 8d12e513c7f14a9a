#!/usr/bin/env bash
# Lints api/openapi.yaml with the pinned @redocly/cli (tests/lint) and checks that the /metrics
# operation documents every metric named in the contract. Exits non-zero on any problem.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
lint_dir="$root/tests/lint"
spec="$root/api/openapi.yaml"
# The prose contract; the first that exists wins.
contract=""
for candidate in "${SWITCHYARD_API_MD:-}" "$root/../shared/API.md" "$root/API.md" "$root/docs/API.md"; do
  if [[ -n "$candidate" && -f "$candidate" ]]; then
    contract="$candidate"
    break
  fi
done

cd "$lint_dir"
# (Re)install when node_modules is missing or older than the lockfile.
stamp="node_modules/.package-lock.json"
if [[ ! -f "$stamp" || ! -x node_modules/.bin/redocly || "package-lock.json" -nt "$stamp" ]]; then
  npm ci --no-audit --no-fund
fi

# Errors fail the lint; so do warnings, to keep the description at zero of both.
lint_status=0
lint_output="$(npx --no-install redocly lint --config redocly.yaml "$spec" 2>&1)" || lint_status=$?
printf '%s\n' "$lint_output"
if (( lint_status != 0 )); then
  exit "$lint_status"
fi
if grep -qE 'You have [0-9]+ warnings?' <<<"$lint_output"; then
  echo "lint-openapi: warnings count as failures" >&2
  exit 1
fi

# Every metric in the contract's Metrics table must appear in the /metrics description.
metrics_doc="$(awk '
  /^  \/metrics:/ { inside = 1 }
  inside && /^      tags:/ { exit }
  inside { print }
' "$spec")"
if [[ -z "$metrics_doc" ]]; then
  echo "lint-openapi: no /metrics operation found in $spec" >&2
  exit 1
fi

if [[ -n "$contract" ]]; then
  names="$(awk '
    /^## Metrics/ { inside = 1; next }
    inside && /^## / { exit }
    inside && /^\| `/ { split($0, cells, "|"); print cells[2] }
  ' "$contract" | grep -oE '`[a-z_][a-z0-9_]*`' | tr -d '`' | sort -u)"
  source_desc="$contract"
else
  # Without the contract at hand, check the names the spec's own table lists.
  names="$(grep -oE '`(switchyard|process)_[a-z0-9_]+`' <<<"$metrics_doc" | tr -d '`' | sort -u)"
  source_desc="the spec's own metric table (API.md not found)"
fi
if [[ -z "$names" ]]; then
  echo "lint-openapi: no metric names found in $source_desc" >&2
  exit 1
fi

missing=0
count=0
while IFS= read -r name; do
  count=$((count + 1))
  if ! grep -qF "\`$name\`" <<<"$metrics_doc"; then
    echo "lint-openapi: metric $name is not listed in the /metrics description" >&2
    missing=1
  fi
done <<<"$names"
if (( missing )); then
  exit 1
fi
echo "lint-openapi: all $count metric names from $source_desc are documented on /metrics"
