#!/usr/bin/env bash
# Builds the Switchyard image with podman on a machine without a Docker engine or Docker Hub
# (see CONTAINERS.md): installs podman from Debian when missing, writes the podman settings these
# machines need to build/podman/containers.conf (nothing global changes), makes the
# debian:bookworm-slim base image from Debian's mirror with debootstrap only when it is missing,
# then runs `podman build` on the project's Dockerfile.
# Usage: scripts/build-image.sh [tag]        (default tag: switchyard:latest)
# Afterwards: export CONTAINERS_CONF="$PWD/build/podman/containers.conf" to use podman run.
# On a Docker host, `docker build -t switchyard .` does the same job.
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-switchyard:latest}"
base="docker.io/library/debian:bookworm-slim"

scripts/install-deps.sh --deploy

mkdir -p build/podman
export CONTAINERS_CONF="$PWD/build/podman/containers.conf"
cat >"$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF

if ! podman image exists "$base"; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  mirror="${mirror:-http://deb.debian.org/debian}"
  rootfs=$(mktemp -d /tmp/switchyard-rootfs.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  echo "build-image: making $base from $mirror with debootstrap"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >/dev/null
  # As the official slim image: no apt lists or caches, no documentation.
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
  tar -C "$rootfs" -c . | podman import --change 'CMD ["bash"]' - "$base" >/dev/null
fi

start=$(date +%s)
# Docker format: the OCI format has no HEALTHCHECK.
podman build --pull=never --layers --format docker -t "$tag" .
echo "build-image: built $tag in $(( $(date +%s) - start )) s; size $(podman image inspect --format '{{.Size}}' "$tag") bytes"
