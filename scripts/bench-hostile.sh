#!/usr/bin/env bash
# Hostile-load benchmark (issue 13, point 5). Starts the API (release build, SQLite, on
# loopback), then:
#   1. a legitimate client places N calls (POST /dapi/call/user) and joins each channel over
#      /rtc (connect + join until `joined`), with no attack: p50/p99 of both;
#   2. one attacker process opens 5,000 idle /rtc sockets (50 loopback addresses 127.0.1.x
#      x 100, the default DAPI_RTC_SOCKETS_PER_IP, plus one more per address that the cap
#      refuses; closed sockets, e.g. by the join deadline, are reopened), floods joins with
#      one token from 8 loops, and floods 64 KiB signals at a peer that never reads;
#   3. once the 5,000 sockets are open, the same legitimate client runs again beside it.
# It prints both sets of figures, the attacker's counters and the legitimate sockets dropped
# (must be 0). The run stops by itself (the attacker has a hard time limit).
#   scripts/bench-hostile.sh [N]        (N calls per phase, default 300)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
N="${1:-300}"
ATTACK_SECS="${ATTACK_SECS:-180}"
PY="${PY:-$ROOT/.venv/bin/python}"
[ -x "$PY" ] || PY=/work/main/.venv/bin/python
"$PY" -c 'import websockets' 2>/dev/null || { echo "needs python websockets (the project .venv)"; exit 1; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
# Built with the same package set as bench-robot.sh, so the two share one release build;
# BENCH_BIN_DIR: an api binary built elsewhere (say which build in BENCHMARKS.md).
if [ -n "${BENCH_BIN_DIR:-}" ]; then
  BIN="$BENCH_BIN_DIR/api"
else
  cargo build --release -q -p api --bin api -p robot-agent --bin robot-agent
  BIN="$CARGO_TARGET_DIR/release/api"
fi
WORK="$(mktemp -d)"
# BENCH_LOG_DIR: keep the attacker's per-second counters and the API's log there.
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${BENCH_LOG_DIR:-}" ] && mkdir -p "$BENCH_LOG_DIR" && cp "$WORK"/*.txt "$WORK"/api.err "$BENCH_LOG_DIR"/ 2>/dev/null; rm -rf "$WORK"' EXIT

# Every limit stays at its default. The legitimate client stands for many users behind a
# reverse proxy: 127.0.0.1 is the trusted proxy (DAPI_TRUSTED_PROXIES) and each of its N
# callers' requests says its own address in X-Forwarded-For. The attacker's addresses
# (127.0.1.x, 127.0.2.x) are not trusted: its own address is what the limits count.
# (Until 2026-12-05 the per-address call and token limits were lifted for the legitimate
# client instead, which also left the attacker's call creation unlimited.)
DAPI_TRUSTED_PROXIES=127.0.0.1/32 \
  "$BIN" --listen 127.0.0.1:0 --database-url "sqlite://$WORK/dapi.db?mode=rwc" \
  > "$WORK/api.out" 2> "$WORK/api.err" &
API=$!
for _ in $(seq 1 100); do grep -q 'listening on' "$WORK/api.out" 2>/dev/null && break; sleep 0.1; done
BASE="$(sed -n 's/^listening on //p' "$WORK/api.out")"
[ -n "$BASE" ] || { cat "$WORK/api.err"; exit 1; }
echo "API $BASE (pid $API); $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"

echo "== without attack"
"$PY" scripts/bench_hostile.py legit "$BASE" "$N" quiet | tee "$WORK/quiet.txt"

echo "== with attack"
# The attacker shares the API's two cores here, which a remote attacker would not: at
# ATTACKER_NICE (default 10) its own CPU use yields to the API and the legitimate client
# instead of counting as the API's slowness. ATTACKER_NICE=0 runs it as an equal.
nice -n "${ATTACKER_NICE:-10}" "$PY" scripts/bench_hostile.py attack "$BASE" "$ATTACK_SECS" > "$WORK/attack.txt" 2> "$WORK/attack.err" &
ATT=$!
for _ in $(seq 1 120); do grep -q READY "$WORK/attack.txt" 2>/dev/null && break; sleep 1; done
grep -q READY "$WORK/attack.txt" || { echo "attacker never got its 5,000 sockets open:"; tail -n 3 "$WORK/attack.txt" "$WORK/attack.err"; }
grep ATTACK "$WORK/attack.txt" | tail -n 1
"$PY" scripts/bench_hostile.py legit "$BASE" "$N" attack | tee "$WORK/attack-legit.txt"
grep ATTACK "$WORK/attack.txt" | tail -n 1
kill -TERM "$ATT" 2>/dev/null || true
wait "$ATT" 2>/dev/null || true
grep ATTACK-FINAL "$WORK/attack.txt" || true
echo "API: /rtc upgrades refused: $(curl -s "$BASE/metrics" | grep '^dapi_rtc_sockets_refused_total' | tr '\n' ' ')"
echo "API log: $(grep -c 'sender cut off' "$WORK/api.err" || true) flooders cut off by the receiver guard"

"$PY" - "$WORK/quiet.txt" "$WORK/attack-legit.txt" <<'PY'
import json, sys
q = json.loads(open(sys.argv[1]).read().split("LEGIT ", 1)[1])
a = json.loads(open(sys.argv[2]).read().split("LEGIT ", 1)[1])
print(f"{'':22}{'no attack':>12}{'attack':>12}{'ratio':>8}")
for k in ("call_user_p50_ms", "call_user_p99_ms", "rtc_join_p50_ms", "rtc_join_p99_ms"):
    print(f"{k:22}{q[k]:>12}{a[k]:>12}{a[k] / q[k]:>8.2f}")
print(f"legitimate sockets dropped: {q['dropped']} without attack, {a['dropped']} with attack")
PY
