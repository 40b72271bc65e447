#!/usr/bin/env bash
# The import benchmark's set, as BENCHMARKS.md (Import) records it: the million-message file
# imported ROUNDS times through `confab import` on each backend, the backends alternated, then
# HTTP_ROUNDS times through POST /v1/import of a running server on each; a fresh database
# every run. Prints one markdown row per backend and path (messages/s of each run).
#
#   scripts/import-set.sh [FILE]      # FILE: default /tmp/million.ndjson (made if missing)
#
# Environment: ROUNDS (3), HTTP_ROUNDS (2), CONFAB (the binary; target/release/confab),
# PG (the server's URL without a database; postgres://postgres@127.0.0.1), PORT (18514).
# Build first: cargo build --release.
set -euo pipefail
cd "$(dirname "$0")/.."
file=${1:-/tmp/million.ndjson}
[ -f "$file" ] || python3 scripts/gen-import.py "$file" --messages 1000000 --conversations 10000 --users 5000
rounds=${ROUNDS:-3}
http_rounds=${HTTP_ROUNDS:-2}
confab=${CONFAB:-./target/release/confab}
bench=./target/release/confab-bench
pg=${PG:-postgres://postgres@127.0.0.1}
port=${PORT:-18514}
sqlite_db=/tmp/confab-import-set.db
pg_db=confab_import_set
server=
trap '[ -n "$server" ] && kill $server 2>/dev/null || true' EXIT

fresh() { # backend -> database URL, emptied; fails rather than reuse a database
  if [ "$1" = sqlite ]; then
    rm -f "$sqlite_db" "$sqlite_db-wal" "$sqlite_db-shm"
    echo "sqlite://$sqlite_db"
  else
    psql "$pg/postgres" -q -v ON_ERROR_STOP=1 -c "drop database if exists $pg_db with (force)" \
      -c "create database $pg_db" >/dev/null || return 1
    echo "$pg/$pg_db"
  fi
}
rate() { # confab-bench's output -> messages/s
  grep "import via" | sed -E 's/.* ([0-9]+) messages\/s.*/\1/'
}
declare -A runs
for _ in $(seq "$rounds"); do
  for backend in sqlite postgres; do
    url=$(fresh $backend) || exit 1
    r=$($bench import --file "$file" --via cli --confab "$confab" --database-url "$url" | rate)
    runs[$backend-cli]+="${runs[$backend-cli]:+, }$r"
  done
done
for _ in $(seq "$http_rounds"); do
  for backend in sqlite postgres; do
    url=$(fresh $backend) || exit 1
    CONFAB_DATABASE_URL=$url CONFAB_ADDR=127.0.0.1:$port RUST_LOG=warn "$confab" serve \
      >/tmp/confab-import-set-server.log 2>&1 &
    server=$!
    # Ready means this server: one that exits (the port taken by another) stops the set.
    for _ in $(seq 100); do
      kill -0 $server 2>/dev/null || { cat /tmp/confab-import-set-server.log >&2; exit 1; }
      curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
      sleep 0.1
    done
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { echo "the server did not start" >&2; exit 1; }
    token=$(CONFAB_DATABASE_URL=$url "$confab" token --server 2>/dev/null)
    r=$($bench import --file "$file" --via http --url "http://127.0.0.1:$port" --token "$token" \
      --server-pid $server | rate)
    kill $server; wait $server 2>/dev/null || true
    server=
    runs[$backend-http]+="${runs[$backend-http]:+, }$r"
  done
done
echo "| backend | path | messages/s |"
echo "|---|---|---|"
for key in sqlite-cli sqlite-http postgres-cli postgres-http; do
  backend=${key%-*}
  path=${key#*-}
  [ -n "${runs[$key]:-}" ] && echo "| $backend | ${path^^} | ${runs[$key]} |"
done
