#!/usr/bin/env bash
# Runs the audio crate's cargo-fuzz targets for a bounded time each (default 60 s).
#
#   scripts/audio-fuzz.sh                 # decode and read_ogg, 60 s each
#   FUZZ_SECONDS=300 scripts/audio-fuzz.sh decode
#
# Needs a nightly toolchain (cargo fuzz builds with -Zsanitizer=address); installs cargo-fuzz
# from crates.io if it is missing. The corpus is seeded with the shared audio fixtures; crashes
# land in audio/fuzz/artifacts/<target>/ and make this script exit non-zero.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FIX="${AUDIO_FIXTURES:-$ROOT/../shared/fixtures/audio}"
[ -d "$FIX" ] || FIX=/work/shared/fixtures/audio  # a clone not beside shared/
SECONDS_EACH="${FUZZ_SECONDS:-60}"
TARGETS=("$@")
[ "${#TARGETS[@]}" -gt 0 ] || TARGETS=(decode read_ogg)

if ! rustup toolchain list | grep -q '^nightly'; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
command -v cmake >/dev/null || bash "$ROOT/scripts/audio-test-deps.sh"

cd "$ROOT/audio/fuzz"
# Same dependency versions as the workspace: start from its lock file (cargo prunes the rest).
[ -f Cargo.lock ] || cp "$ROOT/Cargo.lock" Cargo.lock 2>/dev/null || true
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$ROOT/target-audio/fuzz}"
for t in "${TARGETS[@]}"; do
  corpus="corpus/$t"
  mkdir -p "$corpus"
  if [ -d "$FIX" ]; then
    for f in "$FIX"/*; do
      case "$f" in *.md) continue ;; esac
      cp -n "$f" "$corpus/" 2>/dev/null || true
    done
  fi
  echo "== fuzzing $t for ${SECONDS_EACH} s" >&2
  # -rss_limit_mb: the decoder must stay small whatever the input
  cargo +nightly fuzz run "$t" "$corpus" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=512 -timeout=10 -print_final_stats=1
done
echo "audio-fuzz: no crash in ${TARGETS[*]} (${SECONDS_EACH} s each)" >&2
