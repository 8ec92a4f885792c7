#!/usr/bin/env bash
# Robot benchmarks on loopback, release builds, real processes:
#   1. latency: POST /dapi/call/robot -> first RTP packet at an aiortc app, p50/p95 over
#      $CALLS sequential calls (the `default` asset, cached after a warm-up call);
#   2. fan-out: one agent holding N channels with one listener each, N raised through
#      $STEPS until the p99 send lateness passes 5 ms (robot-agent/examples/fanout.rs);
#   3. failover: three agents, $KILLS SIGKILLs of the agent holding a looping session, the
#      gap in audio at an aiortc app (tests/aiortc/robot_failover_bench.py).
# Prints markdown tables; the figures go into BENCHMARKS-robot.md by hand.
#   4. cold (only when asked for): POST /dapi/call/robot -> first RTP packet for a never-seen
#      30-minute 128 kb/s MP3 (a fresh asset per call), beside a cached 8-second asset.
#   5. voice (only when asked for): the recording cost per participant with $VOICEMAILS
#      concurrent voicemails (robot-agent/examples/record_bench.rs, in one process over the
#      fake transport), then control latency (pause/resume, $ROUNDS rounds: request -> first
#      packet of the resumed audio at an aiortc app, p50/p99) and mark truthfulness ($MARKS
#      marks with random clears; a mark reported played whose audio the app's received RTP
#      did not hold whole is a lie) with tests/aiortc/robot_voice.py.
#   6. bridge (only when asked for), three parts in one run:
#      a. with the real agent and API (robot-agent/examples/bridge_load.rs): $BRIDGE_REAL_STEPS
#         concurrent echo calls, each one WebRTC listener speaking 50 packets/s, plus
#         $BRIDGE_PROBES probe calls; RTP in -> `media` at the program and program `media` ->
#         first RTP at the listener with an empty queue (p50/p99), the agent's send
#         lateness and CPU per call;
#      b. the floor: both paths through a plain Python `websockets` relay
#         (tests/aiortc/bridge_relay_floor.py);
#      c. in one process over a timestamping fake transport, no SRTP/UDP/webrtc
#         (robot-agent/examples/bridge_bench.rs; BRIDGE_INPROCESS=0 skips it): the same
#         figures for $BRIDGE_STEPS calls, and the `clear` leak over $CLEARS clears.
#   scripts/bench-robot.sh [latency|fanout|failover|all|cold|voice|bridge]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WHAT="${1:-all}"
# Each channel costs a UDP socket and a WebSocket in the agent, the API and the probes.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
CALLS="${CALLS:-50}"
STEPS="${STEPS:-50,100,150,200,250,300,350,400}"
MEASURE="${MEASURE:-10}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
PY="${RTC_VENV:-$ROOT/.venv}/bin/python"
[ -x "$PY" ] || { echo "bench-robot: $PY missing: run scripts/install-test-deps.sh" >&2; exit 1; }

# BENCH_BIN_DIR: binaries built elsewhere (api, robot-agent, examples); the figures are
# then those of that build (say which in BENCHMARKS.md).
if [ -n "${BENCH_BIN_DIR:-}" ]; then
  BIN="$BENCH_BIN_DIR"
  echo "bench-robot: prebuilt binaries from $BIN" >&2
else
  # bridge_load in the same command: built alone, the shared dependencies would resolve
  # other features and build again
  EXTRA=(); [ "$WHAT" = bridge ] && EXTRA=(--example bridge_load)
  cargo build --release -p api --bin api -p robot-agent --bin robot-agent --example fanout "${EXTRA[@]}" >&2
  if [ "$WHAT" = voice ]; then
    cargo build --release -p robot-agent --features test-util --example record_bench >&2
  fi
  if [ "$WHAT" = bridge ]; then
    cargo build --release -p robot-agent --features test-util --example bridge_bench >&2
  fi
  BIN="$CARGO_TARGET_DIR/release"
fi
TMP="$(mktemp -d)"
API_PID=""; AGENT_PID=""
cleanup() {
  [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null || true
  [ -n "$API_PID" ] && kill "$API_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT

export DAPI_AGENT_KEY=bench-agent-key DAPI_ADMIN_KEY=bench-admin-key
# The agent's listener transport: ROBOT_RTC_DRIVER (webrtc, the default, or mux) as set when start runs.
RUNS=0
# DAPI_RTC_SOCKETS_PER_IP: every probe of the fan-out joins /rtc from 127.0.0.1.
start() {
  RUNS=$((RUNS + 1))
  DAPI_LISTEN=127.0.0.1:0 DATABASE_URL="sqlite://$TMP/api$RUNS.db?mode=rwc" RUST_LOG=warn \
    DAPI_RATE_CALLS_PER_UID=0 DAPI_RATE_CALLS_PER_IP=0 DAPI_RATE_TOKENS_PER_UID=0 DAPI_RATE_TOKENS_PER_IP=0 DAPI_RATE_WRITES_PER_UID=0 DAPI_RATE_WRITES_PER_IP=0 DAPI_ROBOTS_PER_UID=0 DAPI_RTC_MAX_PEERS=16 DAPI_RTC_SOCKETS_PER_IP=100000 DAPI_RTC_UPGRADES_PER_IP_PER_SEC=0 "$BIN/api" > "$TMP/api.out" 2> "$TMP/api.err" &
  API_PID=$!
  for _ in $(seq 1 300); do
    BASE="$(sed -n 's/^listening on //p' "$TMP/api.out" | head -n1)"
    [ -n "$BASE" ] && break
    sleep 0.1
  done
  [ -n "$BASE" ] || { echo "api did not start" >&2; cat "$TMP/api.err" >&2; exit 1; }
  RUST_LOG=warn ROBOT_RTC_DRIVER="${ROBOT_RTC_DRIVER:-webrtc}" "$BIN/robot-agent" --api-url "$BASE" --capacity 1000 --bind-ip 127.0.0.1 \
    --cache-dir "$TMP/cache" --health-listen 127.0.0.1:0 --leave-grace 60 \
    > "$TMP/agent.out" 2> "$TMP/agent.err" &
  AGENT_PID=$!
  for _ in $(seq 1 100); do
    HEALTH="$(sed -n 's/^health listening on //p' "$TMP/agent.out" | head -n1)"
    [ -n "$HEALTH" ] && curl -sf "$HEALTH/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -sf "$HEALTH/readyz" >/dev/null || { echo "agent not ready" >&2; cat "$TMP/agent.err" >&2; exit 1; }
}

echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/{print $2}') GiB; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
# the bridge bench starts its API (with DAPI_BRIDGES) and agent itself
[ "$WHAT" = bridge ] || start
if [ "$WHAT" = latency ] || [ "$WHAT" = all ]; then
  echo "## latency: POST /dapi/call/robot -> first RTP packet ($CALLS calls, after 1 warm-up)"
  "$PY" tests/aiortc/robot_listener.py --base "$BASE" --bench 1 >/dev/null
  "$PY" tests/aiortc/robot_listener.py --base "$BASE" --bench "$CALLS"
  echo "agent metrics after the latency run:"
  curl -s "$HEALTH/metrics" | grep -E '^robot_(audio_cache|asset_fetches|frames_late_total|frames_total)'
fi
if [ "$WHAT" = fanout ] || [ "$WHAT" = all ]; then
  # One run per listener transport ($DRIVERS, default both: side by side on the same
  # machine state), each with a fresh API and agent so no session of the previous run is
  # offered again to the next agent.
  for driver in ${DRIVERS:-webrtc mux}; do
    if [ "$driver" != "${ROBOT_RTC_DRIVER:-webrtc}" ]; then
      kill "$AGENT_PID" "$API_PID" 2>/dev/null || true
      wait "$AGENT_PID" "$API_PID" 2>/dev/null || true
      ROBOT_RTC_DRIVER="$driver" start
    fi
    # STEPS_WEBRTC / STEPS_MUX: steps of one transport only (else $STEPS).
    steps_var="STEPS_${driver^^}"; steps="${!steps_var:-$STEPS}"
    echo "## fan-out ($driver transport): one agent, N channels x 1 listener (steps $steps, ${MEASURE}s each); load $(cut -d' ' -f1-3 /proc/loadavg)"
    "$BIN/examples/fanout" --api "$BASE" --agent-pid "$AGENT_PID" --metrics "$HEALTH/metrics" \
      --steps "$steps" --measure-secs "$MEASURE" --probes "${PROBES:-light}" \
      --stop-p99-ms "${STOP_P99_MS:-5}"
    ROBOT_RTC_DRIVER="$driver"
  done
fi
if [ "$WHAT" = failover ] || [ "$WHAT" = all ]; then
  # Self-contained: the agent started above would take the session (1000 slots), so it
  # goes; the bench script runs its own three agents (capacity 1, restarted after each kill).
  KILLS="${KILLS:-20}"
  echo "## failover: 3 agents, $KILLS SIGKILLs of the agent holding the session; audio gap at an aiortc app"
  kill "$AGENT_PID" 2>/dev/null || true; wait "$AGENT_PID" 2>/dev/null || true; AGENT_PID=""
  mkdir -p "$TMP/failover"
  "$PY" tests/aiortc/robot_failover_bench.py --base "$BASE" --agent-bin "$BIN/robot-agent" \
    --work "$TMP/failover" --kills "$KILLS" > "$TMP/failover.json"
  "$PY" - "$TMP/failover.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
print("| kills | gap p50 | gap max | kill -> audio p50 | sessions lost | max agents holding it at once | overlap of two agents' audio at the app |")
print("|---|---|---|---|---|---|---|")
print(f"| {r['kills']} | {r['gap_p50_ms']:.0f} ms | {r['gap_max_ms']:.0f} ms | {r['kill_to_audio_p50_ms']:.0f} ms | "
      f"{r['sessions_lost']} | {r['max_agents_listing_the_session']} | {r['max_overlap_ms']:.0f} ms |")
print(f"session at the end: {r['final_state']}, redispatches {r['redispatches']}, attempts {r['attempts']}, "
      f"robot peer connections seen {r['robot_peer_connections']}")
print("gaps (ms):", ", ".join(f"{k['gap_ms']:.0f}" for k in r["per_kill"]))
PYEOF
fi
if [ "$WHAT" = cold ]; then
  # A never-seen 30-minute MP3 per call: one base file (the 10 s speech fixture looped, 44.1
  # kHz stereo, 128 kb/s CBR: 28.8 MB), then a copy per call with its own ID3 title, so its
  # bytes, content hash and cache key are new (the agent has never prepared it) while the
  # encode work is the same. Each is uploaded with PUT /admin/audio/NAME before its call.
  # Before each call the agent's encodes of earlier calls are waited for
  # (robot_audio_encodes_running 0), so a call measures a cold start, not 2 cores shared
  # with the previous call's encode.
  COLD_CALLS="${COLD_CALLS:-10}"
  FIX="${AUDIO_FIXTURES:-$ROOT/../shared/fixtures/audio}"
  [ -f "$FIX/speech_16000_mono_10s.wav" ] || FIX=/work/shared/fixtures/audio
  echo "## cold: POST /dapi/call/robot -> first RTP, a never-seen 30-minute 128 kb/s MP3 per call ($COLD_CALLS calls) beside the cached 8-second default"
  ffmpeg -nostdin -v error -stream_loop -1 -i "$FIX/speech_16000_mono_10s.wav" -t 1800 \
    -ar 44100 -ac 2 -c:a libmp3lame -b:a 128k "$TMP/cold-base.mp3"
  echo "asset: $(stat -c %s "$TMP/cold-base.mp3") bytes, $(ffprobe -v error -show_entries format=duration,bit_rate -of csv=p=0 "$TMP/cold-base.mp3") (duration s, bit/s)"
  cold_ms=()
  for i in $(seq 1 "$COLD_CALLS"); do
    name="cold$$-$i"
    ffmpeg -nostdin -v error -i "$TMP/cold-base.mp3" -c copy -metadata title="$name" "$TMP/$name.mp3"
    curl -sf -X PUT -H "authorization: Bearer $DAPI_ADMIN_KEY" --data-binary "@$TMP/$name.mp3" \
      "$BASE/admin/audio/$name" >/dev/null || { echo "upload of $name failed" >&2; exit 1; }
    rm -f "$TMP/$name.mp3"
    for _ in $(seq 1 600); do
      curl -s "$HEALTH/metrics" | grep -q '^robot_audio_encodes_running 0$' && break
      sleep 0.1
    done
    ms="$("$PY" tests/aiortc/robot_listener.py --base "$BASE" --bench 1 --audio "$name" \
      | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["all_ms"][0])')"
    echo "cold call $i ($name): $ms ms"
    cold_ms+=("$ms")
  done
  "$PY" tests/aiortc/robot_listener.py --base "$BASE" --bench 1 >/dev/null   # default: cached now
  warm="$("$PY" tests/aiortc/robot_listener.py --base "$BASE" --bench "$COLD_CALLS")"
  "$PY" - "$warm" "${cold_ms[@]}" <<'PY'
import json, sys
import numpy as np
warm = json.loads(sys.argv[1])
cold = np.array([float(x) for x in sys.argv[2:]])
w = np.array(warm["all_ms"])
print("| asset | calls | p50 ms | max ms | min ms |")
print("|---|---|---|---|---|")
print(f"| never-seen 30-min MP3, 128 kb/s (28.8 MB) | {len(cold)} | {np.percentile(cold, 50):.0f} | {cold.max():.0f} | {cold.min():.0f} |")
print(f"| cached 8-second `default` | {len(w)} | {np.percentile(w, 50):.0f} | {w.max():.0f} | {w.min():.0f} |")
PY
  echo "agent metrics after the cold run:"
  curl -s "$HEALTH/metrics" | grep -E '^robot_(audio_|asset_fetches|frames_pending_total|frames_late_total|frames_total)'
fi
if [ "$WHAT" = voice ]; then
  VOICEMAILS="${VOICEMAILS:-100}"; ROUNDS="${ROUNDS:-200}"; MARKS="${MARKS:-1000}"
  FIX="${AUDIO_FIXTURES:-$ROOT/../shared/fixtures/audio}"
  [ -f "$FIX/speech_16000_mono_10s.wav" ] || FIX=/work/shared/fixtures/audio
  echo "## recording cost: $VOICEMAILS concurrent voicemails, one participant each, 50 packets/s of 120 bytes"
  "$BIN/examples/record_bench" --sessions "$VOICEMAILS" --secs "${VOICE_SECS:-20}" --bytes 120
  echo "## control latency ($ROUNDS pause/resume rounds) and mark truthfulness ($MARKS marks, random clears)"
  curl -sf -X PUT -H "authorization: Bearer $DAPI_ADMIN_KEY" --data-binary "@$FIX/speech_16000_mono_10s.wav" \
    "$BASE/admin/audio/speech" >/dev/null
  "$PY" - "$TMP/short.wav" <<'PY'
import sys, wave
import numpy as np
t = np.arange(int(16000 * 0.2)) / 16000
x = (0.3 * np.sin(2 * np.pi * 660 * t) * 32767).astype("<i2")
with wave.open(sys.argv[1], "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(16000); w.writeframes(x.tobytes())
PY
  curl -sf -X PUT -H "authorization: Bearer $DAPI_ADMIN_KEY" --data-binary "@$TMP/short.wav" \
    "$BASE/admin/audio/short" >/dev/null
  "$PY" tests/aiortc/robot_voice.py --base "$BASE" --uid bench1 control --audio speech --short short \
    --short-ms 260 --rounds "$ROUNDS" --marks "$MARKS" > "$TMP/voice.json"
  "$PY" - "$TMP/voice.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
q, a = r["resume_from_request_ms"], r["resume_from_answer_ms"]
print("| rounds | request -> audio p50 | p99 | max | answer -> audio p50 | p99 | packets > 20 ms after a pause's answer |")
print("|---|---|---|---|---|---|---|")
print(f"| {r['rounds']} | {q['p50']:.1f} ms | {q['p99']:.1f} ms | {q['max']:.1f} ms | {a['p50']:.1f} ms | {a['p99']:.1f} ms | {r['packets_after_pause_answer']} |")
print()
print("| marks | clears sent | played | cleared | lies | never reported | reported twice | played in order |")
print("|---|---|---|---|---|---|---|---|")
print(f"| {r['marks']} | {r['clears_sent']} | {r['played']} | {r['cleared']} | {r['lies']} | {r['never_reported']} | {r['reported_twice']} | {r['played_in_order']} |")
print(f"played rounds that only look short when packets are cut by arrival window (a run spilling into the next round): {r.get('short_by_arrival_window_only')}")
if r.get("lie_rounds"):
    print("lies:", json.dumps(r["lie_rounds"]))
PY
  # A frame the pacer skips after a stall (a loaded machine) is never sent: an item with
  # skipped frames is not heard whole although its mark's frame was written.
  echo "agent frames skipped or late during the run:"
  curl -s "$HEALTH/metrics" | grep -E '^robot_frames_(skipped|late|pending)_total' || true
fi
if [ "$WHAT" = bridge ]; then
  BRIDGE_STEPS="${BRIDGE_STEPS:-50,100,200,300}"; CLEARS="${CLEARS:-1000}"
  BRIDGE_REAL_STEPS="${BRIDGE_REAL_STEPS:-50,100,150,200,250}"; BRIDGE_PROBES="${BRIDGE_PROBES:-4}"
  BRIDGE_SECS="${BRIDGE_SECS:-20}"
  # The program lives in bridge_load, on a port chosen now so DAPI_BRIDGES can name it.
  PPORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  export DAPI_BRIDGES="{\"echo\": {\"url\": \"ws://127.0.0.1:$PPORT/echo\", \"secret\": \"bench-bridge\", \"format\": \"pcm16\", \"rate\": 16000},
    \"probe\": {\"url\": \"ws://127.0.0.1:$PPORT/probe\", \"secret\": \"bench-bridge\", \"format\": \"opus\", \"rate\": 48000}}"
  # every listener's /rtc socket comes from 127.0.0.1
  export DAPI_RTC_SOCKETS_PER_IP=4000
  start
  echo "## media bridge, real agent and API: echo calls (pcm16 16 kHz) x 1 WebRTC listener speaking, steps $BRIDGE_REAL_STEPS, ${BRIDGE_SECS} s each, + $BRIDGE_PROBES probe calls (opus: one packet every 100 ms to an empty queue)"
  "$BIN/examples/bridge_load" --api "$BASE" --agent-pid "$AGENT_PID" --metrics "$HEALTH/metrics" \
    --program-listen "127.0.0.1:$PPORT" --steps "$BRIDGE_REAL_STEPS" --measure-secs "$BRIDGE_SECS" \
    --probes "$BRIDGE_PROBES"
  echo "agent metrics after the run:"
  curl -s "$HEALTH/metrics" | grep -E '^robot_(frames_(late|skipped)_total|frames_total|sessions\{)' || true
  kill "$AGENT_PID" 2>/dev/null || true; wait "$AGENT_PID" 2>/dev/null || true; AGENT_PID=""
  kill "$API_PID" 2>/dev/null || true; wait "$API_PID" 2>/dev/null || true; API_PID=""
  echo "## the floor: both paths through a plain Python websockets relay (media-sized messages, 50/s each way)"
  "$PY" tests/aiortc/bridge_relay_floor.py --messages 1500
  if [ "${BRIDGE_INPROCESS:-1}" != 0 ]; then
    echo "## media bridge in one process over a fake transport (no SRTP, UDP or webrtc): $BRIDGE_STEPS echo calls (pcm16 16 kHz), ${BRIDGE_SECS} s each; $CLEARS clears"
    "$BIN/examples/bridge_bench" --sessions "$BRIDGE_STEPS" --secs "$BRIDGE_SECS" --clears "$CLEARS" \
      --format "${BRIDGE_FORMAT:-pcm16}" --rate "${BRIDGE_RATE:-16000}"
  fi
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
