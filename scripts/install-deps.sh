#!/usr/bin/env bash
# Installs what Switchyard needs to build and test, from Debian 12 packages only.
# Idempotent: packages already installed are skipped; nothing is downloaded outside apt.
# Usage: scripts/install-deps.sh [--test|--deploy|--fuzz|--bench]
#   --deploy adds podman and what it needs to build and run the image here (CONTAINERS.md) and
#            Prometheus with promtool; --test adds what the test suite needs (which includes the
#            deploy tests: the image built with podman, a real Prometheus scraping the service);
#   --fuzz adds clang-14 and its runtime libraries (libFuzzer, ASan, UBSan) for the fuzz preset
#            and scripts/fuzz.sh.
#   --bench adds what bench/run.sh needs: wrk, nginx (the ceiling: Debian 12's `nginx` package
#            holds the server binary; the suite runs its own instance, not the system service),
#            gnuplot-nox for the plots, python3 for the harness, and linux-perf for profiling.
set -euo pipefail

build_pkgs=(
  build-essential cmake ninja-build ccache pkg-config
  libboost1.81-dev libboost-url1.81-dev
  nlohmann-json3-dev prometheus-cpp-dev doctest-dev libssl-dev
  libcli11-dev libspdlog-dev libfmt-dev libvalijson-dev libseccomp-dev libsqlite3-dev libpq-dev
  libjemalloc-dev
  python3  # the unit tests' stand-in worker (tests/unit/process_pool_test.cpp); the image runs them too
)
test_pkgs=(curl python3 python3-pytest python3-yaml procps postgresql)
# The dnsname CNI plugin: containers on a compose network find each other by service name
# (deploy/compose-postgres.yml: HAProxy -> the replicas -> postgres).
deploy_pkgs=(podman podman-compose buildah runc crun fuse-overlayfs slirp4netns uidmap debootstrap prometheus
             golang-github-containernetworking-plugin-dnsname)
fuzz_pkgs=(clang-14 libclang-rt-14-dev)
bench_pkgs=(wrk nginx gnuplot-nox python3 procps linux-perf)

want=("${build_pkgs[@]}")
if [[ "${1:-}" == "--deploy" ]]; then
  want=("${deploy_pkgs[@]}")
elif [[ "${1:-}" == "--bench" ]]; then
  want+=("${bench_pkgs[@]}")  # run.sh builds the bench preset, so the build packages too
elif [[ "${1:-}" == "--fuzz" ]]; then
  want+=("${fuzz_pkgs[@]}")  # the fuzzers are built here, so the build packages too
elif [[ "${1:-}" == "--test" ]]; then
  want+=("${test_pkgs[@]}" "${deploy_pkgs[@]}")
  # The machine image may ship Node.js with its own npm (which conflicts with Debian's npm
  # package): ask apt only for what is absent.
  command -v node >/dev/null || want+=(nodejs)
  command -v npm >/dev/null || want+=(npm)
fi

missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#want[@]} packages present"
  exit 0
fi

sudo_cmd=()
if [[ $(id -u) -ne 0 ]]; then sudo_cmd=(sudo); fi
echo "install-deps: installing ${missing[*]}"
"${sudo_cmd[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
