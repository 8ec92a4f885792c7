#!/usr/bin/env bash
# Bounded fuzzing of every parser that reads untrusted bytes: tokens, /rtc and /agent
# messages (fuzz/), and the audio decoder (audio/fuzz, via scripts/audio-fuzz.sh).
#   FUZZ_SECONDS=20 scripts/fuzz.sh        # seconds per target (default 20)
# Needs the nightly toolchain (cargo fuzz uses -Zsanitizer); installs cargo-fuzz if missing.
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the script.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECS="${FUZZ_SECONDS:-20}"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
cd "$ROOT/fuzz"
[ -f Cargo.lock ] || cp "$ROOT/Cargo.lock" Cargo.lock
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$ROOT/target-fuzz}"
mkdir -p corpus/token corpus/signaling
# seeds: real tokens and real frames
python3 - "$ROOT" <<'PY'
import json, sys, os
root = sys.argv[1]
v = json.load(open(os.path.join(root, "api/tests/data/agora-tokens.json")))
for i, t in enumerate(v["v006"] + v["v007"]):
    open(os.path.join(root, f"fuzz/corpus/token/seed{i}"), "w").write(t["token"])
frames = ['{"type":"join","appID":"a","channel":"c","uid":"u","token":"t"}',
          '{"type":"signal","to":"u","description":{"type":"offer","sdp":"v=0"}}',
          '{"type":"signal","to":"u","candidate":null}', '{"type":"leave"}',
          '{"type":"register","agent_id":"a","capacity":2,"version":"1"}',
          '{"type":"status","session_id":1,"state":"playing","position_ms":5}']
for i, f in enumerate(frames):
    open(os.path.join(root, f"fuzz/corpus/signaling/seed{i}"), "w").write(f)
PY
for t in token signaling; do
  echo "fuzz: $t for ${SECS}s" >&2
  cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$SECS" -max_len=4096
done
FUZZ_SECONDS="$SECS" "$ROOT/scripts/audio-fuzz.sh"
