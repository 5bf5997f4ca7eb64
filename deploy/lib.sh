#!/usr/bin/env bash
# Shared by deploy/run.sh and deploy/test.sh: make sure PostgreSQL answers on 127.0.0.1:5432,
# using the one already running, or installing (Debian package `postgresql`) and starting one.

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

pg_up() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }

ensure_postgres() {
  if pg_up; then return 0; fi
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    echo "PostgreSQL is not installed: installing the Debian package postgresql" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    local fresh=1
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if [ "${fresh:-0}" = 1 ]; then
    # A cluster installed here is a local development database: let local loopback
    # connections in as the postgres user without a password, as the defaults expect.
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    as_root sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  fi
  echo "starting PostgreSQL $version" >&2
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 60); do
    if pg_up; then
      # The package may have started the cluster before pg_hba.conf was changed.
      [ "${fresh:-0}" = 1 ] && as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload || true
      return 0
    fi
    sleep 0.5
  done
  echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2
  return 1
}

ensure_cargo() {
  if ! command -v cargo >/dev/null; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
  fi
  command -v cargo >/dev/null || { echo "cargo is needed: install Rust with rustup first" >&2; return 1; }
}

nats_up() { (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; }

# The telemetry tests need a NATS server with JetStream: use NATS_URL when it is set, else the
# one answering on 127.0.0.1:4222, else install the Debian package `nats-server` if needed and
# start one with JetStream (its data under $TMPDIR), left running like the PostgreSQL cluster.
ensure_nats() {
  if [ -n "${NATS_URL:-}" ] || nats_up; then return 0; fi
  local bin
  bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  if [ ! -x "$bin" ]; then
    echo "NATS is not installed: installing the Debian package nats-server" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server >/dev/null
    bin=$(command -v nats-server || echo /usr/sbin/nats-server)
  fi
  local dir="${TMPDIR:-/tmp}/chronicle-nats"
  mkdir -p "$dir"
  echo "starting nats-server with JetStream on 127.0.0.1:4222 (data in $dir)" >&2
  nohup "$bin" -a 127.0.0.1 -p 4222 -js -sd "$dir" -l "$dir/nats-server.log" >/dev/null 2>&1 &
  for _ in $(seq 1 40); do
    if nats_up; then return 0; fi
    sleep 0.25
  done
  echo "NATS did not come up on 127.0.0.1:4222" >&2
  return 1
}
