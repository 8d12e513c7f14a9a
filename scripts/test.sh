#!/usr/bin/env bash
# The test command: installs what is missing (Debian 12 packages), builds with a CMake preset and
# runs every test (doctest units, integration tests against the real binary, the OpenAPI lint).
# Usage: scripts/test.sh [dev|release|asan|tsan]    (default: dev)
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-dev}"
scripts/install-deps.sh --test
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset"
ctest --preset "$preset"
