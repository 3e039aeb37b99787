#!/bin/bash
# Entrypoint of dive-offline/postgres:15 (built by scripts/images).
#
# Contract
#   PGDATA                  data directory (default /var/lib/postgresql/data)
#   PGPORT                  listen port (default 5432)
#   POSTGRES_PASSWORD       password of the superuser `postgres`, needed on first start only
#   POSTGRES_PASSWORD_FILE  ... or a file holding it (first line); exclusive with POSTGRES_PASSWORD
# Started as root (the default) it creates PGDATA if needed, gives it to the `postgres` user (so an
# empty, root-owned volume works) and drops to that user; started as `postgres` it runs directly.
# First start (no PGDATA/PG_VERSION): initdb with scram-sha-256 for every connection, then
# listen_addresses='*' and `host all all 0.0.0.0/0 scram-sha-256` (and ::/0). The password is never
# printed and is removed from the server's environment.
# Arguments: none -> `postgres -D $PGDATA -p $PGPORT`; arguments starting with `-` (or `postgres`
# followed by options) are passed to the server (`-c max_connections=200`); anything else is run
# as is (`psql -h db -U postgres`).
# Health: pg_isready -h 127.0.0.1 -p "${PGPORT:-5432}" -U postgres
set -euo pipefail

log() { printf 'postgres-entrypoint: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [ "${1:-}" = postgres ]; then
  shift
elif [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  exec "$@"
fi

: "${PGDATA:=/var/lib/postgresql/data}"
: "${PGPORT:=5432}"
export PGDATA PGPORT

as_postgres=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || die "no user 'postgres' in the image"
  mkdir -p "$PGDATA" /run/postgresql
  # A fresh volume is owned by root; a reused one may carry another uid. Only touch what differs.
  find "$PGDATA" \! -user postgres -exec chown postgres:postgres '{}' +
  chmod 700 "$PGDATA"
  chown postgres:postgres /run/postgresql
  chmod 2775 /run/postgresql
  export HOME=/var/lib/postgresql USER=postgres LOGNAME=postgres
  as_postgres=(setpriv --reuid=postgres --regid=postgres --init-groups --)
elif [ ! -w "$PGDATA" ] && ! mkdir -p "$PGDATA" 2>/dev/null; then
  die "PGDATA $PGDATA is not writable by uid $(id -u); start the container as root or as postgres"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -n "${POSTGRES_PASSWORD:-}" ] && [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    die "set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE, not both"
  fi
  password=""
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    [ -r "$POSTGRES_PASSWORD_FILE" ] || die "POSTGRES_PASSWORD_FILE ($POSTGRES_PASSWORD_FILE) is not readable"
    IFS= read -r password <"$POSTGRES_PASSWORD_FILE" || true
  else
    password=${POSTGRES_PASSWORD:-}
  fi
  [ -n "$password" ] || die "first start: the superuser password is missing or empty (set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE)"

  log "first start: initialising $PGDATA (superuser postgres, scram-sha-256)"
  pwfile=$(mktemp /tmp/pgpass.XXXXXX)
  # printf is a builtin: the password never appears on a command line.
  printf '%s\n' "$password" >"$pwfile"
  unset password
  [ ${#as_postgres[@]} -eq 0 ] || chown postgres "$pwfile"
  if ! "${as_postgres[@]}" initdb -D "$PGDATA" --username=postgres --pwfile="$pwfile" \
      --auth=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/tmp/initdb.log 2>&1; then
    rm -f "$pwfile"
    cat /tmp/initdb.log >&2
    die "initdb failed (if $PGDATA is a mount point holding other files, e.g. lost+found, use a subdirectory)"
  fi
  rm -f "$pwfile" /tmp/initdb.log
  {
    echo
    echo "# added by the dive-offline/postgres entrypoint"
    echo "listen_addresses = '*'"
  } >>"$PGDATA/postgresql.conf"
  {
    echo
    echo "# added by the dive-offline/postgres entrypoint"
    echo "host all all 0.0.0.0/0 scram-sha-256"
    echo "host all all ::/0 scram-sha-256"
  } >>"$PGDATA/pg_hba.conf"
  log "first start: done"
fi

unset POSTGRES_PASSWORD POSTGRES_PASSWORD_FILE
exec "${as_postgres[@]}" postgres -D "$PGDATA" -p "$PGPORT" "$@"
