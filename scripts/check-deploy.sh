#!/usr/bin/env bash
# Checks deploy/ without Docker, a running systemd or a cargo build (only reads files):
#
#   1. every environment variable the deploy files name is one the binaries read: names
#      assigned in deploy/systemd/*.env.example, every DAPI_* / ROBOT_* word in deploy/, and
#      (with PyYAML) every `environment:` key of the compose services built from
#      deploy/*.Dockerfile. "Read" means declared in the Rust sources of the api and
#      robot-agent binaries: clap `env = "NAME"`, `std::env::var("NAME")` / `var_os`, and
#      RUST_LOG when tracing's `EnvFilter::*from_default_env` is used;
#   2. deploy/compose.yaml parses as YAML (with PyYAML from .venv or python3; skipped
#      otherwise), its depends_on and named volumes resolve, every ${VAR} it interpolates is
#      documented in deploy/.env.example, and the agents' stop grace period outlasts a drain;
#   3. both Dockerfiles copy every workspace member (the build reads all their manifests);
#   4. the systemd units pass `systemd-analyze verify` (skipped when it is missing), and the
#      agent unit's TimeoutStopSec outlasts the drain deadline.
#
# Exit status 1 lists every problem found. Run from anywhere: scripts/check-deploy.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

problems=0
problem() { printf 'check-deploy: FAIL: %s\n' "$*" >&2; problems=$((problems + 1)); }
note() { printf 'check-deploy: %s\n' "$*" >&2; }

DEPLOY=deploy
COMPOSE="$DEPLOY/compose.yaml"
ENV_EXAMPLES=("$DEPLOY"/systemd/*.env.example)
for f in "$COMPOSE" "$DEPLOY/.env.example" "$DEPLOY/api.Dockerfile" "$DEPLOY/robot-agent.Dockerfile" \
  "$DEPLOY/systemd/dapi-api.service" "$DEPLOY/systemd/dapi-robot-agent@.service" "${ENV_EXAMPLES[@]}"; do
  [ -f "$f" ] || problem "missing $f"
done

# --- 1. the variables the binaries read --------------------------------------------------
# Sources of the two binaries: their crates and the library crates they link. audio/src/main.rs
# is the separate `audio` command line, so it is left out. TEST_* variables are read by tests only.
sources=()
while IFS= read -r f; do sources+=("$f"); done < <(
  find api/src robot-agent/src audio/src protocol/src -name '*.rs' ! -path audio/src/main.rs | sort
)
known="$(
  {
    grep -hoE 'env[[:space:]]*=[[:space:]]*"[A-Z][A-Z0-9_]*"' "${sources[@]}" | grep -oE '"[A-Z0-9_]+"'
    grep -hoE 'env::var(_os)?\("[A-Z][A-Z0-9_]*"\)' "${sources[@]}" | grep -oE '"[A-Z0-9_]+"'
    if grep -qE 'EnvFilter::(try_)?from_default_env' "${sources[@]}"; then echo '"RUST_LOG"'; fi
  } | tr -d '"' | grep -v '^TEST_' | sort -u
)"
[ -n "$known" ] || problem "found no environment variables in the Rust sources (did the pattern break?)"
is_known() { grep -qxF "$1" <<<"$known"; }

# a) names assigned in the systemd env examples, commented out or not
for f in "${ENV_EXAMPLES[@]}"; do
  while IFS=: read -r line name; do
    is_known "$name" || problem "$f:$line: $name is not read by api or robot-agent"
  done < <(grep -noE '^[[:space:]]*#?[[:space:]]*[A-Z][A-Z0-9_]*=' "$f" | sed -E 's/^([0-9]+):[[:space:]#]*([A-Z0-9_]+)=$/\1:\2/')
done

# b) every DAPI_* / ROBOT_* word anywhere in deploy/ (compose interpolation variables that are
#    not the binaries' own are named without these prefixes, e.g. PUBLIC_HOST)
while IFS=: read -r f line name; do
  is_known "$name" || problem "$f:$line: $name is not read by api or robot-agent"
done < <(grep -rnoE '\b(DAPI|ROBOT)_[A-Z0-9_]*[A-Z0-9]\b' "$DEPLOY" | sort -u)

# --- 2. compose.yaml ----------------------------------------------------------------------
# Every ${VAR} compose interpolates ($$ is a literal $) is documented in deploy/.env.example.
while IFS= read -r name; do
  grep -qE "^[[:space:]]*#?[[:space:]]*$name=" "$DEPLOY/.env.example" ||
    problem "$COMPOSE interpolates \${$name}, which deploy/.env.example does not document"
done < <(grep -oP '(?<!\$)\$\{\K[A-Za-z_][A-Za-z0-9_]*' "$COMPOSE" | sort -u)

PY=""
for cand in "$ROOT/.venv/bin/python" python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import yaml' >/dev/null 2>&1; then
    PY="$cand"; break
  fi
done
drain_default="$(grep -E 'env = "ROBOT_DRAIN_TIMEOUT"' robot-agent/src/lib.rs | grep -oE 'default_value_t = [0-9]+' | grep -oE '[0-9]+' || true)"
[ -n "$drain_default" ] || { problem "cannot find ROBOT_DRAIN_TIMEOUT's default in robot-agent/src/lib.rs"; drain_default=30; }
# The agent waits up to 5 s after the drain deadline to deliver its last statuses (link.rs).
drain_total=$((drain_default + 5))

if [ -z "$PY" ]; then
  note "skip: no python with PyYAML (.venv or python3): compose.yaml not parsed"
else
  out="$(KNOWN="$known" DRAIN_TOTAL="$drain_total" "$PY" - "$COMPOSE" <<'PYEOF' 2>&1
import os, re, sys
import yaml

path = sys.argv[1]
known = set(os.environ["KNOWN"].split())
drain_total = int(os.environ["DRAIN_TOTAL"])
try:
    with open(path) as f:
        doc = yaml.safe_load(f)  # resolves anchors and << merge keys as Compose does
except yaml.YAMLError as e:
    print(f"{path} is not valid YAML: {e}")
    sys.exit(0)
services = (doc or {}).get("services") or {}
if not isinstance(services, dict) or not services:
    print(f"{path}: no services")
    sys.exit(0)
volumes = set(((doc or {}).get("volumes") or {}).keys())

def seconds(v):
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", str(v))
    return int(m.group(1) or 0) * 60 + int(m.group(2) or 0) if m and v else 10

for name, svc in services.items():
    svc = svc or {}
    deps = svc.get("depends_on") or {}
    for dep in (deps if isinstance(deps, (dict, list)) else []):
        if dep not in services:
            print(f"{path}: service {name} depends on unknown service {dep}")
    for vol in svc.get("volumes") or []:
        src = vol.split(":", 1)[0] if isinstance(vol, str) else (vol or {}).get("source", "")
        if src and not src.startswith((".", "/", "~")) and src not in volumes:
            print(f"{path}: service {name} mounts undeclared volume {src}")
    build = svc.get("build") or {}
    dockerfile = build.get("dockerfile", "") if isinstance(build, dict) else ""
    if not dockerfile.startswith("deploy/"):
        continue  # not one of ours (postgres, coturn): their variables are theirs
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, None) for e in env)
    for key in env:
        if key not in known:
            print(f"{path}: service {name} sets {key}, which api and robot-agent do not read")
    if "robot-agent" in dockerfile:
        drain = int(str(env.get("ROBOT_DRAIN_TIMEOUT", drain_total - 5)))
        grace = seconds(svc.get("stop_grace_period"))
        if grace <= drain + 5:
            print(f"{path}: service {name}: stop_grace_period {grace}s does not outlast the "
                  f"drain ({drain}s + 5s to deliver the last statuses)")
PYEOF
)" || problem "python failed on $COMPOSE: $out"
  if [ -n "$out" ]; then
    while IFS= read -r l; do problem "$l"; done <<<"$out"
  else
    note "compose.yaml parsed with $PY"
  fi
fi

# --- 3. Dockerfiles copy every workspace member ----------------------------------------------
members="$(sed -n '/^\[workspace\]/,/^\[/p' Cargo.toml | grep -E '^members' | grep -oE '"[^"]+"' | tr -d '"')"
for df in "$DEPLOY/api.Dockerfile" "$DEPLOY/robot-agent.Dockerfile"; do
  for m in $members migrations; do
    grep -qE "^COPY[[:space:]]+$m/[[:space:]]" "$df" || problem "$df does not COPY $m/ (the workspace needs it)"
  done
done

# --- 4. systemd units --------------------------------------------------------------------------
unit_timeout="$(grep -oE '^TimeoutStopSec=[0-9]+' "$DEPLOY/systemd/dapi-robot-agent@.service" | grep -oE '[0-9]+$' || true)"
if [ -z "$unit_timeout" ] || [ "$unit_timeout" -le "$drain_total" ]; then
  problem "dapi-robot-agent@.service: TimeoutStopSec=${unit_timeout:-unset} must exceed the drain (${drain_default}s + 5s)"
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
  note "skip: systemd-analyze not found: units not verified"
else
  # verify checks that ExecStart exists and is executable: point it at stubs, since the
  # binaries are not installed here. It exits 0 on unknown keys or bad values, so any
  # output counts as a failure.
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  mkdir -p "$tmp/bin"
  for b in api robot-agent; do printf '#!/bin/sh\nexit 0\n' >"$tmp/bin/$b"; chmod +x "$tmp/bin/$b"; done
  for u in "$DEPLOY"/systemd/*.service; do
    sed "s#^ExecStart=/usr/local/bin/#ExecStart=$tmp/bin/#" "$u" >"$tmp/$(basename "$u")"
  done
  if out="$(cd "$tmp" && systemd-analyze verify --man=no ./*.service 2>&1)" && [ -z "$out" ]; then
    note "systemd units verified"
  else
    problem "systemd-analyze verify: ${out:-exit status non-zero}"
  fi
fi

if [ "$problems" -gt 0 ]; then
  note "$problems problem(s)"
  exit 1
fi
note "ok ($(wc -l <<<"$known") variables known to the binaries)"
