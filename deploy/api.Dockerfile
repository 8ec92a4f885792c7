# The `api` server: /dapi, /rtc, /agent, /admin, /healthz, /readyz, /metrics.
#
#   docker build -f deploy/api.Dockerfile -t dapi/api .        (context: the repository root)
#
# Build stage: the whole Cargo workspace is needed (every member manifest is read), and
# `sqlx::migrate!` embeds migrations/ at compile time. The `opus` crate builds libopus from
# source with cmake. Cargo's registry and the target directory live in BuildKit cache mounts
# (shared with deploy/robot-agent.Dockerfile), so a rebuild only recompiles what changed.
#
# No `# syntax=` line: the Dockerfile frontend built into BuildKit (Docker 20.10 and later)
# has every feature used here (RUN --mount=type=cache), and a syntax line would make every
# build look a frontend image up on Docker Hub first, which fails without registry access.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY api/ api/
COPY audio/ audio/
COPY protocol/ protocol/
COPY robot-agent/ robot-agent/
COPY tests/ tests/
COPY migrations/ migrations/
# Parallel compile jobs (Cargo's build.jobs): `default` is one per CPU. On a small or shared
# builder: --build-arg CARGO_BUILD_JOBS=1 (compose: `build: args:` or an override file).
ARG CARGO_BUILD_JOBS=default
RUN --mount=type=cache,id=dapi-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=dapi-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=dapi-target-bookworm,target=/src/target,sharing=locked \
    cargo build --release --locked -p api --bin api \
 && install -D -m 0755 target/release/api /out/api

# Runtime stage: the binary, CA certificates (APNs / webhook TLS), curl for the health check.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 dapi \
 && useradd --system --uid 10001 --gid dapi --home-dir /var/lib/dapi --shell /usr/sbin/nologin dapi \
 && install -d -o dapi -g dapi -m 0700 /var/lib/dapi
COPY --from=build /out/api /usr/local/bin/api
# Container defaults (each one overridable with -e / compose `environment:`): listen on every
# interface, the embedded SQLite in the volume below unless DATABASE_URL says postgres://,
# JSON logs.
ENV DAPI_LISTEN=0.0.0.0:8080 \
    DATABASE_URL=sqlite:///var/lib/dapi/dapi.db \
    DAPI_LOG_FORMAT=json
USER dapi
WORKDIR /var/lib/dapi
VOLUME ["/var/lib/dapi"]
EXPOSE 8080
# /healthz: the process serves HTTP. The port is taken from DAPI_LISTEN (which must then be a
# wildcard or loopback address for 127.0.0.1 to reach it).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD curl -fsS -o /dev/null "http://127.0.0.1:${DAPI_LISTEN##*:}/healthz" || exit 1
# SIGTERM (docker stop) is a graceful shutdown: in-flight requests finish.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/api"]
