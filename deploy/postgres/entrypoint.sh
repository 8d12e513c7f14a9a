#!/bin/sh
# Entrypoint of deploy/postgres/Dockerfile. On the first start (no $PGDATA/PG_VERSION): initdb,
# a login role $POSTGRES_USER (default switchyard) with the password from POSTGRES_PASSWORD_FILE
# or POSTGRES_PASSWORD, owning the database $POSTGRES_DB (default switchyard), and a pg_hba.conf
# that lets that role in from any address with SCRAM and the postgres superuser only through the
# socket (peer). Then the server in the foreground, listening on every address of the container.
# Later starts keep the cluster, its roles and its password as they are.
set -eu

user=${POSTGRES_USER:-switchyard}
db=${POSTGRES_DB:-switchyard}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    password=$(cat "$POSTGRES_PASSWORD_FILE")
  else
    password=${POSTGRES_PASSWORD:-}
  fi
  if [ -z "$password" ]; then
    echo "postgres-entrypoint: set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE for the first start" >&2
    exit 1
  fi
  nl='
'
  case "$password$user$db" in *"$nl"*) echo "postgres-entrypoint: a newline in the password, user or database" >&2; exit 1 ;; esac
  case "$user$db" in *'"'*) echo "postgres-entrypoint: a '\"' in the user or database name" >&2; exit 1 ;; esac
  # The local method only matters until pg_hba.conf is replaced below, before the server starts.
  initdb --username=postgres --encoding=UTF8 --locale=C.UTF-8 --auth=trust >/dev/null
  quoted=$(printf '%s' "$password" | sed "s/'/''/g")
  # Single-user mode: no socket, no network while the role is made. One statement per line.
  postgres --single -D "$PGDATA" postgres >/dev/null <<SQL
CREATE ROLE "$user" LOGIN PASSWORD '$quoted';
CREATE DATABASE "$db" OWNER "$user";
SQL
  cat >"$PGDATA/pg_hba.conf" <<HBA
# Written by postgres-entrypoint on the first start.
local all    postgres peer
local "$db" "$user"  scram-sha-256
host  "$db" "$user"  all scram-sha-256
HBA
  echo "postgres-entrypoint: made the cluster in $PGDATA with role \"$user\" and database \"$db\""
fi

# PostgreSQL's own SIGTERM is a smart shutdown, which waits until every client disconnects (the
# replicas never do); SIGINT is its fast shutdown (roll back, disconnect, checkpoint, exit 0).
postgres -c listen_addresses='*' -c unix_socket_directories=/tmp &
pid=$!
trap 'kill -INT "$pid" 2>/dev/null || true' TERM INT
status=0
while kill -0 "$pid" 2>/dev/null; do
  if wait "$pid"; then status=0; else status=$?; fi
done
exit "$status"
