#!/usr/bin/env bash
# Benchmark of the /dapi API (issue 2): requests/s and p50/p99 latency at 64 concurrent
# connections (wrk) for call/token, call/user, call/msg and call/heartbeat on SQLite and
# PostgreSQL, beside the ceiling of the same transactions issued by a plain loop against
# the database (examples/store_ceiling.rs), in the same run. call/msg reads a uid whose 5
# recent calls were already fetched (a read); call/msg-new reads, each time, a uid with one
# call never fetched, which moves its row from 0 to 1 (the write of a callee's first fetch).
#   scripts/bench-api.sh [SECONDS]     (WRK_THREADS, default 2: wrk threads, sharing the cores with the API)
#   ENDPOINTS=call/msg BACKENDS=sqlite scripts/bench-api.sh 10     (a subset)
#   BASE_REV=4dfd2f5 scripts/bench-api.sh 10     (side by side: each backend runs the
#     binaries of commit BASE_REV, built in a temporary worktree, right after this tree's)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SECS="${1:-10}"
CONC=64
command -v wrk >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"; [ -z "${BASE_TREE:-}" ] || git worktree remove --force "$BASE_TREE"' EXIT
if [ -n "${BASE_REV:-}" ]; then
  # The baseline first, in the same target directory (dependencies are shared; the
  # workspace crates' outputs would be overwritten, so its binaries are copied out).
  BASE_TREE="$WORK/base-tree"
  git worktree add -q --detach "$BASE_TREE" "$BASE_REV"
  echo "building $BASE_REV ($(git log -1 --format=%s "$BASE_REV" | cut -c1-60))" >&2
  (cd "$BASE_TREE" && cargo build --release -q -p api --bin api --example store_ceiling)
  mkdir -p "$WORK/base"
  cp "$CARGO_TARGET_DIR/release/api" "$CARGO_TARGET_DIR/release/examples/store_ceiling" "$WORK/base/"
fi
cargo build --release -q -p api --bin api --example store_ceiling
BIN="$CARGO_TARGET_DIR/release/api"
CEIL="$CARGO_TARGET_DIR/release/examples/store_ceiling"
PGBASE="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
ENDPOINTS="${ENDPOINTS:-call/token,call/user,call/msg,call/msg-new,call/heartbeat}"
WRK_THREADS="${WRK_THREADS:-2}"
BACKENDS="${BACKENDS:-sqlite,postgres}"

lua() { # $1 path, $2 body
  cat > "$WORK/req.lua" <<LUA
wrk.method = "POST"
wrk.path = "$1"
wrk.body = '$2'
wrk.headers["Content-Type"] = "application/json"
LUA
}

# A call from bench-caller to bench-callee on the API at $1; prints its channel.
new_call() {
  curl -s -X POST "$1/dapi/call/user" -H 'content-type: application/json' \
    -d '{"src_uid":"bench-caller","dst_uid":["bench-callee"]}' | sed 's/.*"channel":"\([^"]*\)".*/\1/'
}

run_backend() {
  local name="$1" url="$2"
  # the rate limits would cap a load test from one address: off for the benchmark
  DAPI_RATE_CALLS_PER_UID=0 DAPI_RATE_CALLS_PER_IP=0 DAPI_RATE_TOKENS_PER_UID=0 DAPI_RATE_TOKENS_PER_IP=0 DAPI_RATE_WRITES_PER_UID=0 DAPI_RATE_WRITES_PER_IP=0 DAPI_ROBOTS_PER_UID=0 \
    "$BIN" --listen 127.0.0.1:0 --database-url "$url" > "$WORK/api.out" 2> "$WORK/api.err" &
  local pid=$!
  for _ in $(seq 1 100); do grep -q 'listening on' "$WORK/api.out" 2>/dev/null && break; sleep 0.1; done
  local base; base="$(sed -n 's/^listening on //p' "$WORK/api.out")"
  local ch; ch="$(new_call "$base")"
  # call/msg reads a uid with a realistic handful of recent calls (5), not the thousands
  # that the call/user phase creates for its callee.
  for _ in 1 2 3 4 5; do
    curl -s -o /dev/null -X POST "$base/dapi/call/user" -H 'content-type: application/json' -d '{"src_uid":"bench-caller","dst_uid":["bench-msg"]}'
  done
  for ep in ${ENDPOINTS//,/ }; do
    case "$ep" in
      call/token) lua "/dapi/call/token" "{\"uid\":\"bench-callee\",\"channel\":\"$ch\"}" ;;
      call/user) lua "/dapi/call/user" '{"src_uid":"bench-caller","dst_uid":["bench-callee-u"],"extra_msg":"hi"}' ;;
      call/msg) lua "/dapi/call/msg" '{"uid":"bench-msg"}' ;;
      call/msg-new)
        # One never-fetched call per uid fresh-h-T-I, enough for the run, stored in bulk
        # just before it (inside the 60 s window of call/msg).
        fresh=$((2000 * SECS))
        "$CEIL" seed "$url" fresh-h "$WRK_THREADS" "$fresh" >/dev/null
        cat > "$WORK/req.lua" <<'LUA'
wrk.method = "POST"
wrk.path = "/dapi/call/msg"
wrk.headers["Content-Type"] = "application/json"
local n = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
request = function()
  n = n + 1
  return wrk.format(nil, nil, nil, '{"uid":"fresh-h-' .. tid .. '-' .. n .. '"}')
end
LUA
        ;;
      call/heartbeat)
        # A call that rings during the whole run, as in the plain loop (the one made at the
        # start may have rung out by now: the sweeper ends it after 60 s).
        local hb; hb="$(new_call "$base")"
        lua "/dapi/call/heartbeat" "{\"uid\":\"bench-callee\",\"channel\":\"$hb\"}" ;;
    esac
    wrk -t"$WRK_THREADS" -c"$CONC" -d"${SECS}s" --latency -s "$WORK/req.lua" "$base" > "$WORK/wrk.txt" 2>&1
    local rps p50 p99 non2xx
    rps="$(awk '/Requests\/sec/ {print int($2)}' "$WORK/wrk.txt")"
    p50="$(awk '$1=="50%" {print $2}' "$WORK/wrk.txt")"
    p99="$(awk '$1=="99%" {print $2}' "$WORK/wrk.txt")"
    non2xx="$(awk '/Non-2xx/ {print $5}' "$WORK/wrk.txt")"
    echo "http $name $ep rps=$rps p50=$p50 p99=$p99 non2xx=${non2xx:-0}"
    if [ "$ep" = call/msg-new ]; then
      local sent; sent="$(awk '/requests in/ {print $1}' "$WORK/wrk.txt")"
      [ "$sent" -le $((fresh * WRK_THREADS)) ] \
        || echo "WARNING: $sent requests for $((fresh * WRK_THREADS)) seeded uids: some read nothing"
    fi
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
  "$CEIL" "$url" "$CONC" "$SECS" "$ENDPOINTS" | sed "s/^/$name /"
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "this tree: $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . || echo ' (with uncommitted changes)')${BASE_REV:+; base: $BASE_REV}"
# Each variant (this tree, then the base when BASE_REV is set) on a database of its own.
variants() { # $1 backend, $2 url-maker
  local cur_bin="$BIN" cur_ceil="$CEIL" v
  for v in "" ${BASE_REV:+base}; do
    if [ -n "$v" ]; then BIN="$WORK/base/api" CEIL="$WORK/base/store_ceiling"; fi
    "$2" "$1${v:+-$v}"
    BIN="$cur_bin" CEIL="$cur_ceil"
  done
}
sqlite_run() { run_backend "$1" "sqlite://$WORK/bench-$1.db?mode=rwc"; }
postgres_run() {
  local db="dapi_bench_$$_${1//-/_}"
  psql -q "$PGBASE" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" 2>/dev/null
  run_backend "$1" "${PGBASE%/*}/$db"
  psql -q "$PGBASE" -c "DROP DATABASE IF EXISTS $db" || true
}
case ",$BACKENDS," in *,sqlite,*) variants sqlite sqlite_run ;; esac
case ",$BACKENDS," in *,postgres,*) variants postgres postgres_run ;; esac
