#!/usr/bin/env bash
# Builds both images and runs the compose stack of deploy/ end to end, when a Docker daemon is
# there; prints SKIPPED (exit 0) otherwise. Not part of scripts/test.sh: CI has no daemon, and
# the first build takes many minutes.
#
#   1. docker build of deploy/api.Dockerfile and deploy/robot-agent.Dockerfile (BuildKit),
#      tagged dapi/api:local and dapi/robot-agent:local as in compose.yaml; one at a time, with
#      --build-arg CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1} (a small or shared machine);
#   2. both images run as uid 10001;
#   3. `compose up -d` of deploy/compose.yaml as project `dapi-check` (its own volumes and
#      network, so an operator's `dapi` stack is left alone), with throw-away secrets in a
#      temporary env file (deploy/.env and deploy/api.env are neither read nor written) and
#      the API published on 127.0.0.1:${CHECK_API_PORT:-18080};
#   4. every service healthy; /healthz and /readyz (database: postgres); POST /dapi/call/user
#      refused without a token (401) and accepted with an HS256 JWT; /admin/agents lists
#      robot-agent-1 and robot-agent-2; coturn answers a STUN Binding request on
#      PUBLIC_HOST:3478 from a container on the compose network (as the agents would reach it);
#   5. `compose down -v` (also on failure; KEEP=1 leaves the stack running).
#
# Registry-less machines: when postgres:16-bookworm or coturn/coturn:4.6.2-debian cannot be
# found locally but the stand-ins of scripts/docker-offline-bases.sh can, an override file
# points the services at the stand-ins (and says so). Set OFFLINE_BASES=0 to never do that.
#
# Needs: a running daemon, a docker CLI that builds with BuildKit (the buildx plugin, or a
# CLI older than 23 with DOCKER_BUILDKIT=1), Docker Compose v2.24+ (`docker compose`, or a v2
# `docker-compose` binary; COMPOSE="path/to/docker-compose" picks one), curl and python3.
# Options (environment): SKIP_BUILD=1 (use the existing images), CARGO_BUILD_JOBS,
# CHECK_API_PORT, PUBLIC_HOST (default: the host's docker0 address, which the containers reach),
# HEALTH_TIMEOUT (seconds, default 180), KEEP=1.
#
# Ends with "N passed, N failed"; exit status 1 when anything failed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
log() { printf 'check-docker: %s\n' "$*" >&2; }
passed=0 failed=0
pass() { printf 'check-docker: PASS: %s\n' "$*"; passed=$((passed + 1)); }
fail() { printf 'check-docker: FAIL: %s\n' "$*"; failed=$((failed + 1)); }
finish() { printf '%d passed, %d failed\n' "$passed" "$failed"; [ "$failed" -eq 0 ]; }

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
  echo "check-docker: SKIPPED: no Docker daemon (docker info failed)"
  exit 0
fi

# --- tools ---------------------------------------------------------------------------------
# A docker CLI that builds with BuildKit (the Dockerfiles use RUN --mount=type=cache).
BUILD=()
for cli in docker /usr/bin/docker; do
  command -v "$cli" >/dev/null 2>&1 || continue
  if "$cli" buildx version >/dev/null 2>&1; then
    BUILD=("$cli" build); break
  fi
  v="$("$cli" version --format '{{.Client.Version}}' 2>/dev/null || true)"
  if [ -n "$v" ] && [ "${v%%.*}" -lt 23 ] 2>/dev/null; then
    BUILD=(env DOCKER_BUILDKIT=1 "$cli" build); break
  fi
done
if [ "${SKIP_BUILD:-0}" != 1 ] && [ ${#BUILD[@]} -eq 0 ]; then
  echo "check-docker: FAIL: no docker CLI that builds with BuildKit (install the buildx plugin)"
  exit 1
fi

if [ -n "${COMPOSE:-}" ]; then
  read -r -a COMPOSE_CMD <<<"$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  COMPOSE_CMD=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE_CMD=(docker-compose)
else
  echo "check-docker: FAIL: no Docker Compose (docker compose plugin or a v2 docker-compose)"
  exit 1
fi
cv="$("${COMPOSE_CMD[@]}" version --short 2>/dev/null || true)"
cv="${cv#v}"
if ! printf '%s\n' "2.24.0" "$cv" | sort -V -C 2>/dev/null || [ "${cv%%.*}" != 2 ]; then
  echo "check-docker: FAIL: Docker Compose ${cv:-?} found, 2.24 or later needed (env_file required: false)"
  exit 1
fi
log "docker: client $(docker version --format '{{.Client.Version}}'), engine $(docker version --format '{{.Server.Version}}'); compose $cv; build: ${BUILD[*]:-skipped}"

# --- 1. images -----------------------------------------------------------------------------
jobs="${CARGO_BUILD_JOBS:-1}"
for img in api robot-agent; do
  if [ "${SKIP_BUILD:-0}" = 1 ]; then
    docker image inspect "dapi/$img:local" >/dev/null 2>&1 && pass "image dapi/$img:local present (SKIP_BUILD=1)" ||
      { fail "image dapi/$img:local missing (SKIP_BUILD=1)"; finish; exit 1; }
    continue
  fi
  log "building dapi/$img:local (CARGO_BUILD_JOBS=$jobs) ..."
  start=$SECONDS
  blog="$(mktemp)"
  if "${BUILD[@]}" --progress=plain --build-arg "CARGO_BUILD_JOBS=$jobs" \
      -f "deploy/$img.Dockerfile" -t "dapi/$img:local" . >"$blog" 2>&1; then
    pass "built dapi/$img:local in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "dapi/$img:local" | awk '{printf "%.0f MB", $1/1e6}'))"
    rm -f "$blog"
  else
    tail -30 "$blog" >&2
    fail "docker build -f deploy/$img.Dockerfile (log: $blog)"
    finish; exit 1
  fi
done

# --- 2. users --------------------------------------------------------------------------------
for img in api robot-agent; do
  u="$(docker run --rm --entrypoint id "dapi/$img:local" -u 2>&1 || true)"
  [ "$u" = 10001 ] && pass "dapi/$img:local runs as uid 10001" || fail "dapi/$img:local runs as uid '$u', not 10001"
done

# --- 3. the stack ----------------------------------------------------------------------------
tmp="$(mktemp -d)"
PROJECT=dapi-check
port="${CHECK_API_PORT:-18080}"
# PUBLIC_HOST must be reachable from the containers: by default the host's address on the
# docker0 bridge (coturn runs on the host network and listens on every address).
public_host="${PUBLIC_HOST:-}"
if [ -z "$public_host" ]; then
  public_host="$(ip -4 -o addr show dev docker0 2>/dev/null | awk '{print $4}' | cut -d/ -f1 | head -1)"
fi
if [ -z "$public_host" ]; then
  echo "check-docker: FAIL: cannot tell the docker0 address: set PUBLIC_HOST to an address of this host"
  exit 1
fi
hex() { python3 -c 'import secrets,sys; print(secrets.token_hex(int(sys.argv[1])))' "$1"; }
jwt_secret="$(hex 32)"
admin_key="$(hex 24)"
turn_secret="$(hex 24)"
umask 077
cat >"$tmp/env" <<EOF
POSTGRES_PASSWORD=$(hex 24)
DAPI_AGENT_KEY=$(hex 24)
DAPI_ADMIN_KEY=$admin_key
DAPI_TURN_SECRET=$turn_secret
PUBLIC_HOST=$public_host
DAPI_AUTH=jwt
API_PUBLISH=127.0.0.1:$port
EOF
# The API's JWT key would come from deploy/api.env; the override gives it instead, so that
# the operator's files are not touched.
{
  echo "services:"
  echo "  api:"
  echo "    environment:"
  echo "      DAPI_JWT_SECRET: \"$jwt_secret\""
  if [ "${OFFLINE_BASES:-1}" = 1 ]; then
    for pair in "postgres postgres:16-bookworm dapi-offline/postgres:15-bookworm" \
                "coturn coturn/coturn:4.6.2-debian dapi-offline/coturn:4.6.1-bookworm"; do
      set -- $pair
      if ! docker image inspect "$2" >/dev/null 2>&1 && docker image inspect "$3" >/dev/null 2>&1; then
        log "NOTE: $2 is not here; using the offline stand-in $3 for service $1"
        echo "  $1:"
        echo "    image: $3"
      fi
    done
  fi
} >"$tmp/override.yaml"
umask 022
DC=("${COMPOSE_CMD[@]}" -p "$PROJECT" --env-file "$tmp/env" -f deploy/compose.yaml -f "$tmp/override.yaml")

cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then
    log "KEEP=1: stack left running; stop it with: ${DC[*]} down -v  (files in $tmp)"
    return
  fi
  log "compose down -v ..."
  local s=$SECONDS
  "${DC[@]}" down -v --remove-orphans >"$tmp/down.log" 2>&1 || cat "$tmp/down.log" >&2
  log "down took $((SECONDS - s)) s"
  rm -rf "$tmp"
}
trap cleanup EXIT

log "compose up -d (project $PROJECT, PUBLIC_HOST=$public_host, API on 127.0.0.1:$port) ..."
start=$SECONDS
if ! "${DC[@]}" up -d --no-build >"$tmp/up.log" 2>&1; then
  cat "$tmp/up.log" >&2
  fail "compose up"
  "${DC[@]}" ps -a >&2 || true
  "${DC[@]}" logs --tail 30 >&2 || true
  finish; exit 1
fi

# --- 4. checks -------------------------------------------------------------------------------
services=(postgres api robot-agent-1 robot-agent-2 coturn)
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$("${DC[@]}" ps -q "$1")" 2>/dev/null || echo missing; }
deadline=$((SECONDS + ${HEALTH_TIMEOUT:-180}))
while :; do
  states=""
  all=1
  for s in "${services[@]}"; do
    h="$(health "$s")"
    states+="$s=$h "
    [ "$h" = healthy ] || all=0
  done
  [ "$all" = 1 ] && break
  if [ $SECONDS -ge $deadline ]; then break; fi
  sleep 2
done
if [ "$all" = 1 ]; then
  pass "all healthy $((SECONDS - start)) s after up: $states"
else
  fail "not all healthy after ${HEALTH_TIMEOUT:-180} s: $states"
  "${DC[@]}" logs --tail 30 >&2 || true
fi
"${DC[@]}" ps --format 'table {{.Service}}\t{{.Image}}\t{{.Status}}' || true

base="http://127.0.0.1:$port"
out="$(curl -fsS "$base/healthz" 2>&1)" && pass "GET /healthz: $out" || fail "GET /healthz: $out"
out="$(curl -fsS "$base/readyz" 2>&1)" && grep -q '"postgres"' <<<"$out" && pass "GET /readyz: $out" ||
  fail "GET /readyz (expected database postgres): $out"

body='{"src_uid":"12356","dst_uid":["12345"],"extra_msg":"check-docker"}'
code="$(curl -sS -o "$tmp/resp" -w '%{http_code}' "$base/dapi/call/user" -H 'Content-Type: application/json' -d "$body" || true)"
[ "$code" = 401 ] && pass "POST /dapi/call/user without a token: 401" || fail "POST /dapi/call/user without a token: $code $(cat "$tmp/resp" 2>/dev/null)"
token="$(JWT_SECRET="$jwt_secret" python3 - <<'EOF'
import base64, hashlib, hmac, json, os, time
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b64(json.dumps({"sub": "12356", "exp": int(time.time()) + 600}).encode())
sig = hmac.new(os.environ["JWT_SECRET"].encode(), f"{head}.{claims}".encode(), hashlib.sha256).digest()
print(f"{head}.{claims}.{b64(sig)}")
EOF
)"
code="$(curl -sS -o "$tmp/resp" -w '%{http_code}' "$base/dapi/call/user" -H 'Content-Type: application/json' \
  -H "Authorization: Bearer $token" -d "$body" || true)"
resp="$(cat "$tmp/resp" 2>/dev/null)"
if [ "$code" = 200 ] && grep -q '"success":true' <<<"$resp"; then
  pass "POST /dapi/call/user with an HS256 JWT: 200 ${resp:0:160}"
else
  fail "POST /dapi/call/user with an HS256 JWT: $code $resp"
fi

agents=""
for _ in $(seq 30); do
  agents="$(curl -fsS -H "Authorization: Bearer $admin_key" "$base/admin/agents" 2>&1 || true)"
  grep -q robot-agent-1 <<<"$agents" && grep -q robot-agent-2 <<<"$agents" && break
  sleep 1
done
if grep -q robot-agent-1 <<<"$agents" && grep -q robot-agent-2 <<<"$agents"; then
  pass "GET /admin/agents lists robot-agent-1 and robot-agent-2: ${agents:0:300}"
else
  fail "GET /admin/agents: $agents"
fi
code="$(curl -sS -o /dev/null -w '%{http_code}' "$base/admin/agents" || true)"
[ "$code" = 401 ] && pass "GET /admin/agents without the admin key: 401" || fail "GET /admin/agents without the admin key: $code"

# coturn: a STUN Binding request from the compose network to PUBLIC_HOST:3478, where the
# agents (and apps) find it. The coturn image has the client.
net="$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}' "$("${DC[@]}" ps -q api)" | awk '{print $1}')"
coturn_image="$(docker inspect -f '{{.Config.Image}}' "$("${DC[@]}" ps -q coturn)")"
# --init: turnutils_stunclient waits forever when nothing answers, and as PID 1 it would
# ignore the SIGTERM that timeout(1) has docker forward to it.
out="$(timeout 20 docker run --rm --init --name "$PROJECT-stun" --network "$net" \
  --entrypoint turnutils_stunclient "$coturn_image" "$public_host" 2>&1 || true)"
docker rm -f "$PROJECT-stun" >/dev/null 2>&1 || true
if grep -q 'reflexive addr' <<<"$out"; then
  pass "coturn answers STUN on $public_host:3478 from network $net: $(grep -m1 'reflexive addr' <<<"$out" | sed 's/^[[:space:]]*//')"
else
  fail "coturn STUN on $public_host:3478 from network $net: $out"
fi

finish
