#!/usr/bin/env bash
# Installs what the RTC browser and aiortc tests need. Idempotent: re-running it only
# installs what is missing.
#   apt:  chromium (Debian's; /usr/bin/chromium)
#   npm:  tests/browser/node_modules (playwright-core only; never `npx playwright install`)
#   venv: ./.venv (or $RTC_VENV) with aiortc, numpy and websockets from PyPI
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${RTC_VENV:-$ROOT/.venv}"

need_apt=()
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v node >/dev/null 2>&1 || need_apt+=(nodejs)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then need_apt+=(python3-venv); fi

if [ "${#need_apt[@]}" -gt 0 ]; then
  echo "rtc-test-deps: apt-get install ${need_apt[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

cd "$ROOT/tests/browser"
if [ ! -d node_modules/playwright-core ]; then
  echo "rtc-test-deps: npm install in tests/browser" >&2
  if [ -f package-lock.json ]; then npm ci --no-audit --no-fund; else npm install --no-audit --no-fund; fi
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "rtc-test-deps: creating venv $VENV" >&2
  python3 -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c 'import aiortc, numpy, websockets, cryptography' >/dev/null 2>&1; then
  echo "rtc-test-deps: pip install -r tests/aiortc/requirements.txt" >&2
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -r "$ROOT/tests/aiortc/requirements.txt"
fi
echo "rtc-test-deps: ok" >&2
