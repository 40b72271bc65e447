#!/usr/bin/env bash
# How long a live send waits while an import runs on SQLite (one writer): starts a fresh
# `confab serve`, seeds it as scripts/bench-run.sh does (with 100 conversations for the heavy
# user, which this does not use), then streams the million-message file
# to POST /v1/import and, at the same time, runs the `send` scenario with one sender (one
# request at a time) for 6 s. Prints the import's summary and the sends' latencies.
#
#   scripts/import-live-send.sh [FILE]      # FILE: default /tmp/million.ndjson
#
# Environment: CONFAB_IMPORT_BATCH (the server's default if unset), PORT (18520).
# Build first: cargo build --release.
set -euo pipefail
cd "$(dirname "$0")/.."
file=${1:-/tmp/million.ndjson}
[ -f "$file" ] || python3 scripts/gen-import.py "$file" --messages 1000000 --conversations 10000 --users 5000
port=${PORT:-18520}
db=sqlite:///tmp/confab-live.db
rm -f /tmp/confab-live.db*
CONFAB_DATABASE_URL=$db CONFAB_ADDR=127.0.0.1:$port RUST_LOG=warn \
  CONFAB_RATE_LIMIT_PER_USER=0 CONFAB_RATE_LIMIT_PER_IP=0 \
  ./target/release/confab serve >/tmp/confab-live-server.log 2>&1 &
server=$!
import=
trap 'kill $server $import 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$port/readyz" >/dev/null || { echo "the server did not start" >&2; exit 1; }
token=$(CONFAB_DATABASE_URL=$db ./target/release/confab token --server 2>/dev/null)
./target/release/confab-bench seed --url "http://127.0.0.1:$port" --token "$token" \
  --users 2000 --conversations 5000 --messages 100000 --heavy-user-conversations 100 >/dev/null
./target/release/confab-bench import --file "$file" --via http \
  --url "http://127.0.0.1:$port" --token "$token" | grep "import via" &
import=$!
sleep 1
./target/release/confab-bench run --url "http://127.0.0.1:$port" --token "$token" \
  --scenarios send --concurrency 1 --duration 6s --warmup 100ms | sed -n '/^scenario/,$p'
wait $import
