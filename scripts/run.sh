#!/usr/bin/env bash
# The main job on the embedded defaults: the API on SQLite (./var/dapi.db) and one robot
# agent connected to it. Installs what the build needs (cmake, for libopus) when missing,
# builds both in release mode, generates the agent and admin keys once (./var/keys.env) when
# DAPI_AGENT_KEY / DAPI_ADMIN_KEY are unset, waits for the API's `listening on`, prints the
# demo URL, and stops both on Ctrl-C or SIGTERM. Extra arguments go to the api.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if ! command -v cmake >/dev/null 2>&1; then
  echo "run: installing cmake (libopus is built from source)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq cmake >/dev/null
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
# RUN_BIN_DIR: run binaries already built there (the test of this script uses the debug
# build); by default build both in release mode.
if [ -n "${RUN_BIN_DIR:-}" ]; then
  BIN_DIR="$RUN_BIN_DIR"
else
  echo "run: building api and robot-agent (release)" >&2
  cargo build --release -p api --bin api -p robot-agent --bin robot-agent
  BIN_DIR="$CARGO_TARGET_DIR/release"
fi
# RUN_VAR_DIR: where the database, keys, cache and stdout copy go (default ./var).
VAR="${RUN_VAR_DIR:-$ROOT/var}"
mkdir -p "$VAR"

# Keys: from the environment, else generated once and kept in $VAR/keys.env (mode 600).
if [ -z "${DAPI_AGENT_KEY:-}" ] || [ -z "${DAPI_ADMIN_KEY:-}" ]; then
  if [ ! -f "$VAR/keys.env" ]; then
    umask 077
    {
      echo "DAPI_AGENT_KEY=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
      echo "DAPI_ADMIN_KEY=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')"
    } > "$VAR/keys.env"
    echo "run: generated DAPI_AGENT_KEY and DAPI_ADMIN_KEY in $VAR/keys.env" >&2
  fi
  # shellcheck disable=SC1091
  set -a; . "$VAR/keys.env"; set +a
fi
export DAPI_AGENT_KEY DAPI_ADMIN_KEY
export DATABASE_URL="${DATABASE_URL:-sqlite://$VAR/dapi.db}"

API_PID=""; AGENT_PID=""
stop() {
  trap - INT TERM EXIT
  [ -n "$AGENT_PID" ] && kill -TERM "$AGENT_PID" 2>/dev/null || true
  [ -n "$API_PID" ] && kill -TERM "$API_PID" 2>/dev/null || true
  [ -n "$AGENT_PID" ] && wait "$AGENT_PID" 2>/dev/null || true
  [ -n "$API_PID" ] && wait "$API_PID" 2>/dev/null || true
}
trap 'stop; exit 130' INT
trap 'stop; exit 143' TERM
trap stop EXIT

# Logs: readable lines for a person at a terminal, JSON otherwise (a service manager, a
# pipe, a file). Decided here from the script's own stderr, where both processes log, so
# that a wrapper (tee, a process substitution) cannot tip the binaries' own "auto" guess.
# DAPI_LOG_FORMAT set by the caller wins; the agent follows it unless ROBOT_LOG_FORMAT is set.
if [ -z "${DAPI_LOG_FORMAT:-}" ] || [ "${DAPI_LOG_FORMAT}" = auto ]; then
  if [ -t 2 ]; then DAPI_LOG_FORMAT=pretty; else DAPI_LOG_FORMAT=json; fi
fi
ROBOT_LOG_FORMAT="${ROBOT_LOG_FORMAT:-$DAPI_LOG_FORMAT}"
export DAPI_LOG_FORMAT ROBOT_LOG_FORMAT
echo "run: logs as $DAPI_LOG_FORMAT (DAPI_LOG_FORMAT=json|pretty to choose)" >&2

OUT="$VAR/api.stdout"
: > "$OUT"
"$BIN_DIR/api" "$@" > >(tee "$OUT") &
API_PID=$!
URL=""
for _ in $(seq 1 300); do
  URL="$(sed -n 's/^listening on //p' "$OUT" | head -n1)"
  [ -n "$URL" ] && break
  kill -0 "$API_PID" 2>/dev/null || { echo "run: the api exited" >&2; exit 1; }
  sleep 0.1
done
[ -n "$URL" ] || { echo "run: the api did not start listening" >&2; exit 1; }

# The agent talks to the API on loopback; a wildcard listen address is reached there.
AGENT_URL="$(printf '%s' "$URL" | sed 's#//0\.0\.0\.0:#//127.0.0.1:#; s#//\[::\]:#//127.0.0.1:#')"
"$BIN_DIR/robot-agent" --api-url "$AGENT_URL" \
  --capacity "${ROBOT_CAPACITY:-8}" --cache-dir "${ROBOT_CACHE_DIR:-$VAR/robot-cache}" &
AGENT_PID=$!

echo "run: demo at $URL/demo (go online, then \"Call the robot\"); Ctrl-C stops the api and the agent" >&2
# Whichever exits first ends the run.
wait -n "$API_PID" "$AGENT_PID" || true
