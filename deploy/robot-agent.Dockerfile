# The `robot-agent`: takes robot sessions from the API over /agent and plays prepared audio
# into channels over WebRTC.
#
#   docker build -f deploy/robot-agent.Dockerfile -t dapi/robot-agent .   (context: repo root)
#
# Same build stage as deploy/api.Dockerfile (same cache ids: the two builds share compiled
# dependencies such as the `audio` crate and libopus, built with cmake).
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
    cargo build --release --locked -p robot-agent --bin robot-agent \
 && install -D -m 0755 target/release/robot-agent /out/robot-agent

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 dapi \
 && useradd --system --uid 10001 --gid dapi --home-dir /var/cache/dapi-robot --shell /usr/sbin/nologin dapi \
 && install -d -o dapi -g dapi -m 0700 /var/cache/dapi-robot
COPY --from=build /out/robot-agent /usr/local/bin/robot-agent
# Container defaults: the asset cache (fetched assets/ and prepared Opus prepared/) in the
# volume below, the health port on 9090 (off unless set), JSON logs. Still required at run
# time: ROBOT_API_URL (or DAPI_API_URL) and DAPI_AGENT_KEY.
ENV ROBOT_CACHE_DIR=/var/cache/dapi-robot \
    ROBOT_HEALTH_LISTEN=0.0.0.0:9090 \
    ROBOT_LOG_FORMAT=json
USER dapi
WORKDIR /var/cache/dapi-robot
VOLUME ["/var/cache/dapi-robot"]
# 9090/tcp: /healthz, /readyz, /metrics. Media is WebRTC over UDP on ephemeral ports, one
# socket per interface and listener; nothing to publish: reach listeners through STUN/TURN
# (the API hands out DAPI_ICE_SERVERS) or run the container with the host network.
EXPOSE 9090
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD curl -fsS -o /dev/null "http://127.0.0.1:${ROBOT_HEALTH_LISTEN##*:}/healthz" || exit 1
# SIGTERM starts a drain: no new sessions, held ones finish or are handed back after
# ROBOT_DRAIN_TIMEOUT (30 s) + up to 5 s to deliver the last statuses. Give `docker stop`
# more than that (compose: stop_grace_period: 60s; docker stop -t 60).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/robot-agent"]
