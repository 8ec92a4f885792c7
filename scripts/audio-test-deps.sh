#!/usr/bin/env bash
# Installs what the audio crate's tests, benchmark and quality scripts need. Idempotent:
# re-running it only installs what is missing.
#   apt:  cmake (libopus build), sox, ffmpeg, opus-tools, espeak-ng, hyperfine
#   venv: /work/main/.venv (or $AUDIO_VENV) with numpy scipy soundfile pesq from PyPI
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${AUDIO_VENV:-$ROOT/.venv}"

need_apt=()
for pair in cmake:cmake sox:sox ffmpeg:ffmpeg opusinfo:opus-tools opusdec:opus-tools \
            espeak-ng:espeak-ng hyperfine:hyperfine; do
  bin="${pair%%:*}"; pkg="${pair##*:}"
  if ! command -v "$bin" >/dev/null 2>&1; then
    need_apt+=("$pkg")
  fi
done
if [ ! -x /usr/bin/time ]; then need_apt+=(time); fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then need_apt+=(python3-venv); fi

if [ "${#need_apt[@]}" -gt 0 ]; then
  # shellcheck disable=SC2207
  uniq_pkgs=($(printf '%s\n' "${need_apt[@]}" | sort -u))
  echo "audio-test-deps: apt-get install ${uniq_pkgs[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${uniq_pkgs[@]}" >/dev/null
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "audio-test-deps: creating venv $VENV" >&2
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import numpy, scipy, soundfile, pesq' >/dev/null 2>&1; then
  echo "audio-test-deps: pip install numpy scipy soundfile pesq" >&2
  "$VENV/bin/pip" install -q --upgrade pip
  # pesq's setup imports numpy and needs Cython at build time
  "$VENV/bin/pip" install -q numpy scipy soundfile cython wheel setuptools
  "$VENV/bin/pip" install -q --no-build-isolation pesq || "$VENV/bin/pip" install -q pesq
fi
echo "audio-test-deps: ok" >&2
