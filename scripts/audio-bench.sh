#!/usr/bin/env bash
# One-command benchmark of the audio pipeline against ffmpeg and opusenc (issue 3, point 9).
#
#   scripts/audio-bench.sh            # full run: 5 timed runs per command
#   RUNS=2 scripts/audio-bench.sh     # quicker
#
# 1. builds the release `audio` binary (CARGO_TARGET_DIR=target-audio)
# 2. builds a 600 s 44.1 kHz stereo test file from the shared fixtures (speech, sweep, sine),
#    as docs/audio.md describes, and encodes it to MP3 128 kb/s with ffmpeg
# 3. times side by side, same machine, same run (hyperfine -N):
#      ours:    audio prepare long.mp3 -o ours.opus              (mono, 32 kb/s, Voip)
#      ffmpeg:  ffmpeg -i long.mp3 -ar 48000 -ac 1 -c:a libopus -b:a 32k ff.ogg
#      opusenc: opusenc --downmix-mono --bitrate 32 long.wav oe.opus  (it cannot read MP3)
#    and peak RSS of each with /usr/bin/time -f '%e %M'
# 4. PESQ-WB (scripts/audio-quality.py) of ours and ffmpeg at 24 and 32 kb/s on the 10 s
#    speech fixture, all decoded with libopus (opusdec)
# Results: a markdown summary on stdout and in $OUT/results.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FIX="${AUDIO_FIXTURES:-$ROOT/../shared/fixtures/audio}"
[ -d "$FIX" ] || FIX=/work/shared/fixtures/audio  # a clone not beside shared/
OUT="${AUDIO_BENCH_DIR:-$ROOT/target-audio/bench}"
RUNS="${RUNS:-5}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target-audio}"

bash "$ROOT/scripts/audio-test-deps.sh"
PY="${AUDIO_VENV:-$ROOT/.venv}/bin/python"

echo "== building release audio binary" >&2
(cd "$ROOT" && cargo build --release -p audio --bin audio >&2)
AUDIO="$CARGO_TARGET_DIR/release/audio"

mkdir -p "$OUT"
cd "$OUT"
Q=(-nostdin -loglevel error -y)

if [ ! -s long.mp3 ] || [ ! -s long.wav ]; then
  echo "== building the 600 s test file" >&2
  sox -R "$FIX/speech_16000_mono_10s.wav" -r 44100 -c 2 -b 16 p1.wav
  sox -R "$FIX/speech_44100_stereo_3s.wav" -r 44100 -c 2 -b 16 p2.wav
  sox -R "$FIX/sweep_22050_stereo_3s.wav" -r 44100 -c 2 -b 16 p3.wav
  sox -R "$FIX/sine1k_8000_mono_3s.wav" -r 44100 -c 2 -b 16 p4.wav
  sox -R -n -r 44100 -c 2 -b 16 p5.wav trim 0 1
  # 10 + 3 + 3 + 3 + 1 = 20 s, then 30 times: 600 s
  sox -R p1.wav p2.wav p3.wav p4.wav p5.wav block.wav
  sox -R block.wav long.wav repeat 29
  rm -f p1.wav p2.wav p3.wav p4.wav p5.wav block.wav
  ffmpeg "${Q[@]}" -i long.wav -c:a libmp3lame -b:a 128k long.mp3
fi
DUR=$(soxi -D long.wav)

echo "== timing ($RUNS runs each)" >&2
hyperfine -N --warmup 1 --runs "$RUNS" --export-json times.json \
  -n ours "$AUDIO prepare long.mp3 -o ours.opus" \
  -n ffmpeg "ffmpeg ${Q[*]} -i long.mp3 -ar 48000 -ac 1 -c:a libopus -b:a 32k ff.ogg" \
  -n opusenc "opusenc --quiet --downmix-mono --bitrate 32 long.wav oe.opus" >&2

echo "== peak RSS" >&2
rss() { /usr/bin/time -f '%e %M' "$@" 2>&1 >/dev/null | tail -1; }
RSS_OURS=$(rss "$AUDIO" prepare long.mp3 -o ours.opus)
RSS_FF=$(rss ffmpeg "${Q[@]}" -i long.mp3 -ar 48000 -ac 1 -c:a libopus -b:a 32k ff.ogg)
RSS_OE=$(rss opusenc --quiet --downmix-mono --bitrate 32 long.wav oe.opus)

echo "== quality (PESQ-WB on the speech fixture)" >&2
SPEECH="$FIX/speech_16000_mono_10s.wav"
for br in 24 32; do
  "$AUDIO" prepare "$SPEECH" -o "q_ours_$br.opus" --bitrate "${br}000" >/dev/null
  ffmpeg "${Q[@]}" -i "$SPEECH" -ar 48000 -ac 1 -c:a libopus -b:a "${br}k" "q_ff_$br.ogg"
  ffmpeg "${Q[@]}" -i "$SPEECH" -ar 48000 -ac 1 -c:a libopus -b:a "${br}k" -application voip "q_ffvoip_$br.ogg"
  for f in "q_ours_$br.opus" "q_ff_$br.ogg" "q_ffvoip_$br.ogg"; do
    opusdec --quiet --rate 48000 --float "$f" "${f%.*}.wav"
  done
done
"$PY" "$ROOT/scripts/audio-quality.py" "$SPEECH" q_ours_24.wav q_ff_24.wav q_ffvoip_24.wav \
  q_ours_32.wav q_ff_32.wav q_ffvoip_32.wav > quality.jsonl

opusinfo ours.opus > ours.opusinfo.txt 2>&1 || true

"$PY" - "$DUR" "$RSS_OURS" "$RSS_FF" "$RSS_OE" "$(nproc)" "$(uname -srm)" <<'PYEOF' | tee results.md
import json, sys, os
dur = float(sys.argv[1])
rss = {"ours": sys.argv[2].split(), "ffmpeg": sys.argv[3].split(), "opusenc": sys.argv[4].split()}
t = {r["command"]: r for r in json.load(open("times.json"))["results"]}
q = [json.loads(l) for l in open("quality.jsonl")]
size = {k: os.path.getsize(f) for k, f in [("ours", "ours.opus"), ("ffmpeg", "ff.ogg"), ("opusenc", "oe.opus")]}
print(f"machine: {sys.argv[6]}, {sys.argv[5]} cores; input: {dur:.3f} s MP3 128 kb/s 44.1 kHz stereo (opusenc: the same as WAV)")
print()
print("| command | mean wall (s) | ± | x realtime (wall) | user CPU (s) | x realtime (CPU) | peak RSS (MB) | output kb/s |")
print("|---|---|---|---|---|---|---|---|")
for k in ["ours", "ffmpeg", "opusenc"]:
    r = t[k]
    kb = size[k] * 8 / dur / 1000
    cpu = r["user"] + r["system"]
    print(f"| {k} | {r['mean']:.3f} | {r['stddev']:.3f} | {dur / r['mean']:.0f}x | {cpu:.3f} | {dur / cpu:.0f}x | {int(rss[k][1]) / 1024:.1f} | {kb:.1f} |")
print()
cpu = {k: t[k]["user"] + t[k]["system"] for k in t}
print(f"speed ours / ffmpeg: {t['ffmpeg']['mean'] / t['ours']['mean']:.2f}x wall, {cpu['ffmpeg'] / cpu['ours']:.2f}x CPU (target >= 1.5x); ours / opusenc: {t['opusenc']['mean'] / t['ours']['mean']:.2f}x wall, {cpu['opusenc'] / cpu['ours']:.2f}x CPU")
print(f"load average when done: {open('/proc/loadavg').read().split()[:3]}")
print()
print("| PESQ-WB, speech_16000_mono_10s | 24 kb/s | 32 kb/s |")
print("|---|---|---|")
def get(prefix, br):
    for r in q:
        if os.path.basename(r["file"]) == f"{prefix}_{br}.wav":
            return r["pesq_wb"]
for name, prefix in [("ours (Voip, bandwidth capped)", "q_ours"), ("ffmpeg libopus (default, -application audio)", "q_ff"), ("ffmpeg libopus -application voip", "q_ffvoip")]:
    print(f"| {name} | {get(prefix, 24)} | {get(prefix, 32)} |")
PYEOF
