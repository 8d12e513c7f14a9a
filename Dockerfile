# Switchyard image.
#   build:   the project's own install script, the CMake release preset, and the unit tests
#            (which fork real worker processes from the built binary).
#   runtime: the binary, its runtime libraries, tini and the OpenAPI file; no compiler.
# Build: docker build -t switchyard .     (podman: see CONTAINERS.md / scripts/build-image.sh)
# Run:   docker run --rm -p 8080:8080 switchyard
ARG BASE_IMAGE=debian:bookworm-slim

FROM ${BASE_IMAGE} AS build
WORKDIR /src
# Dependencies first, so that a source change does not reinstall them.
COPY scripts/install-deps.sh scripts/install-deps.sh
RUN scripts/install-deps.sh && rm -rf /var/lib/apt/lists/* /var/cache/apt/*
COPY . .
# The cache mount keeps ccache's objects between image builds on the same host (BuildKit, buildah).
RUN --mount=type=cache,target=/ccache \
    export CCACHE_DIR=/ccache \
 && rm -rf build \
 && cmake --preset release >/dev/null \
 && cmake --build --preset release \
 && ctest --preset release -R '^unit$' \
 && strip build/release/server/switchyard

FROM ${BASE_IMAGE}
# Runtime libraries of the binary (ldd build/release/server/switchyard), tini as PID 1 (forwards
# SIGTERM to the server and reaps any orphan a job leaves), nothing else.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      tini libssl3 libjemalloc2 libboost-url1.81.0 libprometheus-cpp-core1.0 libspdlog1.10 libfmt9 libseccomp2 libsqlite3-0 libpq5 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/switchyard \
      --shell /usr/sbin/nologin switchyard \
 && mkdir -p /var/lib/switchyard \
 && chown switchyard:switchyard /var/lib/switchyard
COPY --from=build /src/build/release/server/switchyard /usr/local/bin/switchyard
COPY --from=build /src/api/openapi.yaml /usr/share/switchyard/openapi.yaml

ENV SWITCHYARD_LISTEN=0.0.0.0:8080 \
    SWITCHYARD_DATA_DIR=/var/lib/switchyard
USER 10001:10001
WORKDIR /var/lib/switchyard
VOLUME ["/var/lib/switchyard"]
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/switchyard", "healthcheck", "--timeout-s", "2"]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/switchyard"]
