#!/usr/bin/env bash
# Runs Chronicle locally: makes sure PostgreSQL is there, builds, creates and migrates the
# database, and serves on CHRONICLE_LISTEN (default 127.0.0.1:8080). Without
# CHRONICLE_JWT_SECRET it runs with --dev (a fixed development secret, said loudly).
# NATS: uses NATS_URL if set; otherwise makes sure a local nats-server with JetStream answers
# on 127.0.0.1:4222 (installing and starting it if needed) and uses it, so telemetry over NATS
# and the event fan-out work out of the box. CHRONICLE_NO_NATS=1 runs without NATS.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh
ensure_cargo
ensure_postgres
if [ -z "${NATS_URL:-}" ] && [ -z "${CHRONICLE_NO_NATS:-}" ]; then
  ensure_nats
  export NATS_URL=nats://127.0.0.1:4222
fi
cargo build --release --bin chronicle
args=(serve)
if [ -z "${CHRONICLE_JWT_SECRET:-}" ]; then args=(--dev serve); fi
exec "${CARGO_TARGET_DIR:-target}/release/chronicle" "${args[@]}" "$@"
