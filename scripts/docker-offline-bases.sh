#!/usr/bin/env bash
# Builds LOCAL STAND-INS for the public base images that deploy/ uses, for a Docker daemon
# that cannot reach a container registry.
#
# It exists only because the development machine has no registry access (its network reaches
# Debian's apt mirror, crates.io, PyPI and npm, nothing else). An operator does not need it:
# `docker build` and `docker compose up` pull the official images from Docker Hub.
#
#   debian:bookworm-slim   debootstrap --variant=minbase of Debian 12, imported with
#                          `docker import` (same tag as the official image, so the
#                          Dockerfiles build unchanged)
#   rust:1-bookworm        that base + the C toolchain, pkg-config, git, curl and ca-certificates
#                          of the official image (buildpack-deps), plus THIS MACHINE's Rust
#                          toolchain (rustup cannot download here), laid out as in the official
#                          image: RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo,
#                          and this machine's extra CA certificates (its egress proxy re-signs
#                          TLS; cargo inside the build must trust it to reach crates.io).
#                          cmake is left out on purpose (the official image lacks it too; the
#                          Dockerfiles install it).
#   dapi-offline/postgres:15-bookworm
#                          Debian's postgresql-15 (bookworm has no 16) with a small entrypoint
#                          that does what the official image does with POSTGRES_USER,
#                          POSTGRES_PASSWORD and POSTGRES_DB (initdb on first start, password
#                          auth for TCP). Stands in for postgres:16-bookworm.
#   dapi-offline/coturn:4.6.1-bookworm
#                          Debian's coturn 4.6.1, run as nobody like the official image.
#                          Stands in for coturn/coturn:4.6.2-debian.
#
# The two third-party stand-ins get their own names, not the official tags, since they are
# not the same versions: scripts/check-docker.sh points compose at them with an override file.
#
# Usage: scripts/docker-offline-bases.sh [--force]   (root: debootstrap needs it)
#   Skips an image that already exists unless --force. Needs debootstrap and a running
#   daemon. Work files go to $WORK (default /tmp/dapi-docker-bases) and are removed at the end.
set -euo pipefail
FORCE=0
[ "${1:-}" = --force ] && FORCE=1
WORK="${WORK:-/tmp/dapi-docker-bases}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# These builds use nothing of BuildKit: the classic builder (DOCKER_BUILDKIT=0) works with
# any docker CLI, with or without the buildx plugin.
DOCKER="${DOCKER:-docker}"
log() { printf 'docker-offline-bases: %s\n' "$*" >&2; }
have() { [ "$FORCE" = 0 ] && "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
build() { # TAG CONTEXT-DIR
  log "building $1 ..."
  DOCKER_BUILDKIT=0 "$DOCKER" build -q -t "$1" "$2" >/dev/null
  rm -rf "$2"
  log "$1 built"
}

mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT

# --- debian:bookworm-slim ------------------------------------------------------------------
if have debian:bookworm-slim; then
  log "debian:bookworm-slim exists"
else
  command -v debootstrap >/dev/null || { log "needs debootstrap (apt-get install debootstrap)"; exit 1; }
  log "debootstrap bookworm (minbase) ..."
  rootfs="$WORK/rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
    { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
  # As in the official image: updates and security suites, no apt caches or lists.
  cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb ${MIRROR%/debian}/debian-security bookworm-security main
EOF
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
  tar -C "$rootfs" --numeric-owner -c . |
    "$DOCKER" import -c 'CMD ["bash"]' -m 'offline stand-in (debootstrap minbase)' - debian:bookworm-slim >/dev/null
  rm -rf "$rootfs"
  log "debian:bookworm-slim imported"
fi

# --- rust:1-bookworm -------------------------------------------------------------------------
if have rust:1-bookworm; then
  log "rust:1-bookworm exists"
else
  command -v rustup >/dev/null || { log "needs this machine's rustup toolchain"; exit 1; }
  toolchain="$(rustup show active-toolchain | cut -d' ' -f1)"
  src="$(rustup run "$toolchain" rustc --print sysroot)"
  ctx="$WORK/rust"
  mkdir -p "$ctx/rustup/toolchains/$toolchain" "$ctx/cargo/bin"
  # The toolchain without its HTML documentation (~800 MB).
  tar -C "$src" --exclude=./share/doc -c . | tar -C "$ctx/rustup/toolchains/$toolchain" -x
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n' \
    "$toolchain" >"$ctx/rustup/settings.toml"
  install -m 0755 "$(command -v rustup)" "$ctx/cargo/bin/rustup"
  for p in cargo rustc rustdoc rustfmt cargo-fmt cargo-clippy clippy-driver rust-gdb rust-lldb; do
    ln -s rustup "$ctx/cargo/bin/$p"
  done
  # This machine reaches crates.io through a TLS-inspecting proxy whose CA is in the host's
  # /usr/local/share/ca-certificates: the build container needs it too, or cargo fails with
  # "SSL certificate problem: self-signed certificate in certificate chain". Only the build
  # stage gets it; the runtime images download nothing.
  mkdir -p "$ctx/extra-ca"
  cp /usr/local/share/ca-certificates/*.crt "$ctx/extra-ca/" 2>/dev/null || true
  cat >"$ctx/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl git gcc g++ libc6-dev make \
      pkg-config libssl-dev file xz-utils procps \
 && rm -rf /var/lib/apt/lists/*
COPY extra-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH
COPY rustup /usr/local/rustup
COPY cargo /usr/local/cargo
RUN rustc --version && cargo --version
EOF
  log "rust:1-bookworm gets $toolchain"
  build rust:1-bookworm "$ctx"
fi

# --- dapi-offline/postgres:15-bookworm ----------------------------------------------------------
if have dapi-offline/postgres:15-bookworm; then
  log "dapi-offline/postgres:15-bookworm exists"
else
  ctx="$WORK/postgres"
  mkdir -p "$ctx"
  cat >"$ctx/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
# Stand-in for the official image's entrypoint: POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB,
# data in $PGDATA, password (scram) auth over TCP, trust on the local socket.
set -eu
# Like the official entrypoint: another command (psql, pg_dump, ...) runs as given.
case "${1:-postgres}" in
  postgres) shift $(($# > 0 ? 1 : 0)) ;;
  -*) ;;
  *) exec "$@" ;;
esac
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$PGDATA" /var/run/postgresql
  chown -R postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-$user}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
  pw="$(mktemp)"
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pw"
  initdb -D "$PGDATA" -U "$user" --pwfile="$pw" --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256
  rm -f "$pw"
  echo 'host all all all scram-sha-256' >>"$PGDATA/pg_hba.conf"
  if [ "$db" != postgres ]; then
    pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start
    createdb -U "$user" "$db"
    pg_ctl -D "$PGDATA" -m fast -w stop
  fi
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
EOF
  chmod 0755 "$ctx/docker-entrypoint.sh"
  cat >"$ctx/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN mkdir -p /etc/postgresql-common \
 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
 && apt-get update \
 && apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/*
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
EOF
  build dapi-offline/postgres:15-bookworm "$ctx"
fi

# --- dapi-offline/coturn:4.6.1-bookworm ---------------------------------------------------------
if have dapi-offline/coturn:4.6.1-bookworm; then
  log "dapi-offline/coturn:4.6.1-bookworm exists"
else
  ctx="$WORK/coturn"
  mkdir -p "$ctx"
  cat >"$ctx/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends coturn \
 && rm -rf /var/lib/apt/lists/*
EXPOSE 3478 3478/udp
USER nobody:nogroup
ENTRYPOINT ["turnserver"]
EOF
  build dapi-offline/coturn:4.6.1-bookworm "$ctx"
fi
"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' |
  grep -E '^(debian:bookworm-slim|rust:1-bookworm|dapi-offline/)' >&2
