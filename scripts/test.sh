#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what is missing, then formatting, lints,
# every Rust test on SQLite and on PostgreSQL (a fresh database per test), the browser
# and aiortc end-to-end tests, schemathesis against /openapi.json, and bounded fuzzing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
step() { printf '\n==> %s\n' "$*" >&2; }

step "installing test dependencies (only what is missing)"
scripts/install-test-deps.sh

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
export TEST_DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
pg_isready -q -d "$TEST_DATABASE_URL" || { echo "PostgreSQL at $TEST_DATABASE_URL is not reachable" >&2; exit 1; }

# The build needs about 6 GB (target/ plus the two fuzz target directories).
df -h "$CARGO_TARGET_DIR" 2>/dev/null | tail -n1 | awk '{print "disk: " $4 " free where the build goes"}' >&2 || true

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

step "building binaries and tests"
# With the test targets: their dev-dependencies change the features of shared dependencies
# (resolver 2), so `--bins` alone builds hyper, tower, symphonia... a second time, with
# other features, before `cargo test` builds them again as it needs them.
cargo build --workspace --bins --tests
# The end-to-end tests run these binaries. Without the variables each test crate builds them
# with `cargo build -p <crate>`, whose feature set differs from the workspace build's, which
# rebuilds dependencies (8 minutes and gigabytes of target/ on a clean clone).
export API_BIN="$CARGO_TARGET_DIR/debug/api" ROBOT_AGENT_BIN="$CARGO_TARGET_DIR/debug/robot-agent"

step "cargo test (SQLite and PostgreSQL: TEST_DATABASE_URL=$TEST_DATABASE_URL)"
cargo test --workspace --no-fail-fast -- --test-threads="${TEST_THREADS:-2}"

step "deployment files (compose, Dockerfiles, systemd units) name only real settings"
scripts/check-deploy.sh

step "schemathesis against /openapi.json (no 5xx, every answer matches the document)"
scripts/schemathesis.sh

step "bounded fuzzing (tokens, /rtc and /agent messages, audio decoder)"
FUZZ_SECONDS="${FUZZ_SECONDS:-20}" scripts/fuzz.sh

du -sh "$CARGO_TARGET_DIR" 2>/dev/null | awk '{print "target size: " $1}' >&2 || true
step "all tests passed"
