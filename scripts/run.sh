#!/usr/bin/env bash
# The main job on the embedded defaults: the API on SQLite (./var/dapi.db), and one robot
# agent when it is built. Installs what the build needs (cmake, for libopus) when missing.
# Stop with Ctrl-C.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if ! command -v cmake >/dev/null 2>&1; then
  echo "run: installing cmake (libopus is built from source)" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq cmake >/dev/null
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
echo "run: building (release)" >&2
cargo build --release -p api --bin api
mkdir -p var
export DATABASE_URL="${DATABASE_URL:-sqlite://$ROOT/var/dapi.db}"
exec "$CARGO_TARGET_DIR/release/api" "$@"
