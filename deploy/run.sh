#!/usr/bin/env bash
# Runs Chronicle locally: makes sure PostgreSQL is there, builds, creates and migrates the
# database, and serves on CHRONICLE_LISTEN (default 127.0.0.1:8080). Without
# CHRONICLE_JWT_SECRET it runs with --dev (a fixed development secret, said loudly).
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh
ensure_cargo
ensure_postgres
cargo build --release --bin chronicle
args=(serve)
if [ -z "${CHRONICLE_JWT_SECRET:-}" ]; then args=(--dev serve); fi
exec target/release/chronicle "${args[@]}" "$@"
