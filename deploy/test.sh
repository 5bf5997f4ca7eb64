#!/usr/bin/env bash
# Runs the whole test suite against a real PostgreSQL (started or installed if missing).
# Each test creates its own database and drops it when done.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh
ensure_cargo
ensure_postgres
cargo test --workspace --no-fail-fast "$@"
