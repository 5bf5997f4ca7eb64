#!/usr/bin/env bash
# Runs the whole test suite against a real PostgreSQL and NATS JetStream (each started or
# installed if missing).
# Each test creates its own database and drops it when done. Ends with one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh
ensure_cargo
ensure_postgres
ensure_nats
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
