#!/usr/bin/env bash
# Chronicle's benchmark command (not a test).
#
#   deploy/bench.sh [deposits|long-stream|all] [--duration 30] [--concurrency 32] [...]
#   deploy/bench.sh rebuild [--events 1000000] [--accounts 2000] [--concurrency 32]
#   deploy/bench.sh lag [--duration 30] [--concurrency 32] [--probe-interval-ms 20]
#   deploy/bench.sh telemetry [--duration 30] [--devices 1000] [--publishers 4] [--in-flight 512]
#                             [--nats-rate 0] [--max-backlog 500000] [--readings-per-message 100]
#                             [--zstd LEVEL] [--http-clients 64] [--copy-rows 10000]
#                             [--raw-under-load] [...]
#   deploy/bench.sh telemetry-cpu [--duration 30] [--readings-per-message 100] [--zstd LEVEL]
#   deploy/bench.sh audit [--events 1000000] [--rss-events 100000] [--rounds 3] [--accounts 2000]
#   deploy/bench.sh --help
#
# rebuild: loads a mix of commands over HTTP (server with --roles api), then rebuilds every
# read model in-process and compares with raw multi-row INSERTs of the same rows.
# lag: server with --roles api,projectors,processes under the deposits load; measures how long
# after a deposit's answer its event is applied by the wallets and stats projectors.
# telemetry: server with --roles api,ingest and NATS_URL (default nats://127.0.0.1:4222), a
# stream, subjects and consumer of its own (deleted at the end); simulated devices publish
# readings over NATS, then post batches over HTTP; each path against a raw binary COPY of the
# same rows.
# telemetry-cpu: no server, no database: the NATS worker's own CPU per reading (decompress,
# parse, check, COPY encoding, rollup delta) on one thread.
# audit: loads the rebuild's mix (server with --roles api), then times `chronicle audit export`
# (NDJSON and CSV, the release binary as a child process, its peak RSS read from /proc at
# --rss-events and at --events), the NDJSON route GET /v1/audit/events and verify, each against
# a raw COPY (SELECT <the same columns> FROM events ORDER BY tx, position) TO STDOUT of the same
# rows in the same run.
#
# Builds the release binaries, then runs target/release/chronicle-bench, which creates a fresh
# database chronicle_bench_<random> on BENCH_DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/postgres), runs `chronicle serve` against it as a child
# process, measures, prints a table, and stops the child and drops the database at the end.
# BENCH_KEEP_DATABASE=1 keeps that database at the end (its name is printed);
# BENCH_REUSE_DATABASE=<name> runs against an existing database instead, neither created nor
# dropped: the rebuild then measures the log already in it (no load, no chain figures), e.g.
# a copy (CREATE DATABASE x TEMPLATE <kept>) of a database kept after a load.
# Results and how to read them: docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. deploy/lib.sh
ensure_cargo
if [ -z "${BENCH_DATABASE_URL:-}" ]; then
  # The default points at the local PostgreSQL: start (or install) it if it is not there.
  ensure_postgres
fi
cargo build --release -p chronicle -p chronicle-bench
exec "${CARGO_TARGET_DIR:-target}/release/chronicle-bench" "$@"
