#!/usr/bin/env bash
# Runs `confab-bench run` against a fresh `confab serve` on one backend, from a fresh database:
# starts the server, seeds it through the bulk import path, runs every scenario with the
# same-SQL and naive ceilings, the server's CPU and RSS, and writes the table, JSON and SVG.
#
#   scripts/bench-run.sh sqlite|postgres [out-dir]
#
# Environment: CONCURRENCY (1,16,64), DURATION (5s), SCENARIOS (all), SEED_ARGS (the seed
# sizes below), PORT (18500). Build first: cargo build --release.
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:?sqlite or postgres}
out=${2:-target/bench}
mkdir -p "$out"
port=${PORT:-18500}
seed_args=${SEED_ARGS:---users 2000 --conversations 5000 --messages 100000 --heavy-user-conversations 1000}
case $backend in
  sqlite)
    rm -f /tmp/confab-bench.db* /tmp/confab-bench-naive.db*
    db=sqlite:///tmp/confab-bench.db
    naive=sqlite:///tmp/confab-bench-naive.db ;;
  postgres)
    psql -q -h 127.0.0.1 -U postgres -c "drop database if exists confab_bench" \
      -c "create database confab_bench" -c "drop database if exists confab_naive" \
      -c "create database confab_naive"
    db=postgres://postgres@127.0.0.1/confab_bench
    naive=postgres://postgres@127.0.0.1/confab_naive ;;
  *) echo "sqlite or postgres" >&2; exit 2 ;;
esac
CONFAB_DATABASE_URL=$db CONFAB_ADDR=127.0.0.1:$port RUST_LOG=warn \
  CONFAB_RATE_LIMIT_PER_USER=0 CONFAB_RATE_LIMIT_PER_IP=0 \
  ./target/release/confab serve >"$out/server-$backend.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
token=$(CONFAB_DATABASE_URL=$db ./target/release/confab token --server 2>/dev/null)
# shellcheck disable=SC2086
./target/release/confab-bench seed --url "http://127.0.0.1:$port" --token "$token" $seed_args
./target/release/confab-bench run --url "http://127.0.0.1:$port" --token "$token" \
  --concurrency "${CONCURRENCY:-1,16,64}" --duration "${DURATION:-5s}" \
  --scenarios "${SCENARIOS:-send,inbox,page,sync_idle,create_direct,healthz,ping}" \
  --database-url "$naive" --sql-database-url "$db" --server-pid $server \
  --json "$out/run-$backend.json" --svg "$out/run-$backend.svg" | tee "$out/run-$backend.txt"
