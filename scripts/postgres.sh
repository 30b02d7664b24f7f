#!/usr/bin/env bash
# A PostgreSQL cluster for the team set-up (PPO_DB=postgres make serve): data in $PPO_HOME/postgres,
# listening on 127.0.0.1:$PG_PORT only, user ppo with a generated password ($PPO_HOME/run/postgres.pw),
# databases mlflow and prefect. Uses Debian's postgresql server binaries.
#   scripts/postgres.sh start   # init on first use, start, create the databases; prints nothing else
#   scripts/postgres.sh stop
#   scripts/postgres.sh url DB  # postgresql://ppo:...@127.0.0.1:PORT/DB
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PPO_HOME="${PPO_HOME:-$ROOT/.ppo}"
RUN="$PPO_HOME/run"
PGDATA="$PPO_HOME/postgres"
PORT_FILE="$RUN/postgres.port"
PW_FILE="$RUN/postgres.pw"

bindir() {
  local d
  d="$(pg_config --bindir 2>/dev/null || true)"
  [ -x "$d/initdb" ] || d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  [ -x "$d/initdb" ] || { echo "error: PostgreSQL server binaries not found; install Debian's postgresql package" \
    "(apt-get install postgresql; .ci/run does)" >&2; exit 1; }
  echo "$d"
}

as_owner() {  # PostgreSQL refuses to run as root: run its programs as the postgres user then
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

port() { cat "$PORT_FILE" 2>/dev/null || echo "${PG_PORT:-5433}"; }

url() {  # DB [driver]
  echo "postgresql${2:++$2}://ppo:$(cat "$PW_FILE")@127.0.0.1:$(port)/$1"
}

start() {
  local bin; bin="$(bindir)"
  mkdir -p "$RUN"
  echo "${PG_PORT:-5433}" >"$PORT_FILE"
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    if [ "$(id -u)" = 0 ] && ! runuser -u postgres -- test -x "$PPO_HOME"; then
      echo "error: the postgres user cannot reach $PPO_HOME (a parent directory is private); choose a" \
        "PPO_HOME it can traverse" >&2; exit 1
    fi
    mkdir -p "$PGDATA"; chmod 700 "$PGDATA"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$PGDATA"
    (umask 077; python3 -c 'import secrets; print(secrets.token_hex(16))' >"$PW_FILE")
    local pwtmp; pwtmp="$(mktemp)"; cp "$PW_FILE" "$pwtmp"
    [ "$(id -u)" = 0 ] && chown postgres "$pwtmp"
    as_owner "$bin/initdb" -D "$PGDATA" -U ppo --pwfile="$pwtmp" --auth-host=scram-sha-256 --auth-local=peer \
      -E UTF8 >"$RUN/postgres-init.log" 2>&1 || { rm -f "$pwtmp"; echo "error: initdb failed:" >&2;
      tail -20 "$RUN/postgres-init.log" >&2; exit 1; }
    rm -f "$pwtmp"
  fi
  if ! as_owner "$bin/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    as_owner "$bin/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $(port) -k $PGDATA" start >/dev/null || {
      echo "error: PostgreSQL did not start; last lines of $PGDATA/server.log:" >&2
      tail -20 "$PGDATA/server.log" >&2; exit 1; }
    touch "$RUN/postgres.started"
  fi
  for db in mlflow prefect; do
    PGPASSWORD="$(cat "$PW_FILE")" psql -h 127.0.0.1 -p "$(port)" -U ppo -d postgres -tAqc \
      "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1 ||
      PGPASSWORD="$(cat "$PW_FILE")" psql -h 127.0.0.1 -p "$(port)" -U ppo -d postgres -qc "CREATE DATABASE $db"
  done
}

stop() {
  [ -f "$PGDATA/PG_VERSION" ] || return 0
  local bin; bin="$(bindir)"
  if as_owner "$bin/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; then
    as_owner "$bin/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null && echo "stopped postgres ($PGDATA)"
  fi
  rm -f "$RUN/postgres.started"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) url "${2:?database name}" "${3:-}" ;;
  *) echo "usage: $0 start|stop|url DB [driver]" >&2; exit 2 ;;
esac
