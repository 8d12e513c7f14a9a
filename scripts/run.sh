#!/usr/bin/env bash
# The run command: installs what is missing, builds the release binary and starts the service on
# 127.0.0.1:8080 (override with flags or SWITCHYARD_* variables, e.g. scripts/run.sh --diagnostics).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release --target switchyard
exec build/release/server/switchyard "$@"
