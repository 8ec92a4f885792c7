#!/usr/bin/env bash
# Benchmark of the robot queue (issue 6, point 8): sessions queued through
# POST /dapi/call/robot on the real `api` binary and offered over WS /agent to agents that
# accept at once (api/examples/queue_bench.rs): throughput (sessions offered per second) and
# enqueue-to-offer latency p50/p99 (one at a time, paced at RATE/s, saturated), on SQLite and
# on PostgreSQL, beside the database's own ceiling (single-row INSERT + COMMIT, one
# connection, synchronous commit on) on the same database in the same run.
#   scripts/bench-queue.sh [SECONDS] [CONCURRENCY] [AGENTS] [LATENCY_SAMPLES] [RATE]
#   BASE_REV=4dfd2f5 scripts/bench-queue.sh     (side by side: each backend also runs the
#     binaries of commit BASE_REV, built in a temporary worktree, right after this tree's)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SECS="${1:-10}"
CONC="${2:-16}"
AGENTS="${3:-4}"
SAMPLES="${4:-200}"
RATE="${5:-200}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"; [ -z "${BASE_TREE:-}" ] || git worktree remove --force "$BASE_TREE"' EXIT
if [ -n "${BASE_REV:-}" ]; then
  # The baseline first, in the same target directory (dependencies are shared); its
  # binaries are copied out before this tree's build overwrites them.
  BASE_TREE="$WORK/base-tree"
  git worktree add -q --detach "$BASE_TREE" "$BASE_REV"
  echo "building $BASE_REV ($(git log -1 --format=%s "$BASE_REV" | cut -c1-60))" >&2
  (cd "$BASE_TREE" && cargo build --release -q -p api --bin api --example queue_bench)
  mkdir -p "$WORK/base"
  cp "$CARGO_TARGET_DIR/release/api" "$CARGO_TARGET_DIR/release/examples/queue_bench" "$WORK/base/"
fi
cargo build --release -q -p api --bin api --example queue_bench
BIN="$CARGO_TARGET_DIR/release/api"
BENCH="$CARGO_TARGET_DIR/release/examples/queue_bench"
PGBASE="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"

run_backend() {
  local url="$1"
  # The agents of the benchmark never renew, the callers never heartbeat and the robot
  # never joins: lease, heartbeat and ring timeouts longer than the run. One load generator
  # on one address: no rate limits. The sweeper (500 ms) and the backstop poll (1 s) as shipped.
  DAPI_AGENT_KEY=bench-agent-key DAPI_LEASE_SECONDS=3600 DAPI_HEARTBEAT_TIMEOUT=3600 DAPI_RING_TIMEOUT=3600 \
    DAPI_RATE_CALLS_PER_UID=0 DAPI_RATE_CALLS_PER_IP=0 DAPI_RATE_TOKENS_PER_UID=0 DAPI_RATE_TOKENS_PER_IP=0 DAPI_RATE_WRITES_PER_UID=0 DAPI_RATE_WRITES_PER_IP=0 DAPI_ROBOTS_PER_UID=0 \
    "$BIN" --listen 127.0.0.1:0 --database-url "$url" > "$WORK/api.out" 2> "$WORK/api.err" &
  local pid=$!
  for _ in $(seq 1 100); do grep -q 'listening on' "$WORK/api.out" 2>/dev/null && break; sleep 0.1; done
  local base; base="$(sed -n 's/^listening on //p' "$WORK/api.out")"
  echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
  "$BENCH" "$base" "$url" "$SECS" "$CONC" "$AGENTS" "$SAMPLES" "$RATE"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "seconds=$SECS enqueuers=$CONC agents=$AGENTS latency_samples=$SAMPLES rate=$RATE/s"
echo
echo "| backend | what | sessions | rate | p50 enqueue→offer | p99 | max |"
echo "|---|---|---|---|---|---|---|"
echo "this tree: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . || echo ' (with uncommitted changes)')${BASE_REV:+; each backend then runs the base, $BASE_REV}"
# Each variant (this tree, then the base when BASE_REV is set) on a database of its own.
variants() { # $1 run function
  local cur_bin="$BIN" cur_bench="$BENCH" v
  for v in this ${BASE_REV:+base}; do
    if [ "$v" = base ]; then BIN="$WORK/base/api" BENCH="$WORK/base/queue_bench"; fi
    [ -z "${BASE_REV:-}" ] || echo "| ($v) | | | | | | |"
    "$1" "$v"
    BIN="$cur_bin" BENCH="$cur_bench"
  done
}
sqlite_run() { run_backend "sqlite://$WORK/queue-$1.db?mode=rwc"; }
postgres_run() {
  local db="dapi_qbench_$$_$1"
  psql -q "$PGBASE" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" 2>/dev/null
  run_backend "${PGBASE%/*}/$db"
  psql -q "$PGBASE" -c "DROP DATABASE IF EXISTS $db" || true
}
variants sqlite_run
variants postgres_run
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
