#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian machine, only what is
# missing: apt packages (cmake for libopus, sox/ffmpeg/opus-tools for audio checks,
# chromium for browser tests), the local PostgreSQL when it is not running, Node
# packages for the browser tests, and a Python venv (.venv) with aiortc, numpy and pesq.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive

need=()
for pair in cmake:cmake sox:sox ffmpeg:ffmpeg opusinfo:opus-tools opusdec:opus-tools \
            espeak-ng:espeak-ng chromium:chromium node:nodejs npm:npm psql:postgresql-client \
            hyperfine:hyperfine wrk:wrk; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair##*:}")
done
[ -x /usr/bin/time ] || need+=(time)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ "${#need[@]}" -gt 0 ]; then
  echo "install-test-deps: apt-get install ${need[*]}" >&2
  $SUDO apt-get update -qq
  # shellcheck disable=SC2046
  $SUDO apt-get install -y -qq $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
fi

# PostgreSQL: start the local cluster when it is not answering.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if ls /etc/postgresql >/dev/null 2>&1; then
    echo "install-test-deps: starting PostgreSQL" >&2
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  for _ in $(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 1; done
fi

# Each part's own installer (audio fixtures tools, browser and aiortc peers).
for s in scripts/audio-test-deps.sh scripts/rtc-test-deps.sh scripts/robot-test-deps.sh; do
  if [ -x "$s" ]; then "$s"; fi
done
echo "install-test-deps: done" >&2
