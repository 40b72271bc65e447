#!/usr/bin/env bash
# Alternates two builds of the server on one seeded database and reports, per scenario, the
# throughput and the server's context switches and CPU per request (`perf stat` on its pid),
# which vary less than throughput on a machine whose speed drifts.
#
#   scripts/ab-requests.sh sqlite|postgres OLD_CONFAB NEW_CONFAB [rounds] [scenarios] [concurrency]
#
# Defaults: 2 rounds; healthz,sync_idle,page_before,inbox; 16. The database (the small dataset
# of scripts/bench-run.sh) is seeded once per backend and kept: /tmp/confab-ab.db or the
# database confab_ab; delete it to seed again. Needs perf and bc; build first
# (cargo build --release: its confab-bench drives the load).
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:?sqlite or postgres}; old=${2:?old confab binary}; new=${3:?new confab binary}
rounds=${4:-2}; scenarios=${5:-healthz,sync_idle,page_before,inbox}; conc=${6:-16}
port=${PORT:-18600}
bench=./target/release/confab-bench
case $backend in
  sqlite) db=sqlite:///tmp/confab-ab.db; seeded=/tmp/confab-ab.db ;;
  postgres) db=postgres://postgres@127.0.0.1/confab_ab; seeded=/tmp/confab-ab.pg-seeded ;;
  *) echo "sqlite or postgres" >&2; exit 2 ;;
esac
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null || true' EXIT
start() {
  CONFAB_DATABASE_URL=$db CONFAB_ADDR=127.0.0.1:$port RUST_LOG=warn \
    CONFAB_RATE_LIMIT_PER_USER=0 CONFAB_RATE_LIMIT_PER_IP=0 "$1" serve >/tmp/confab-ab.log 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return; sleep 0.1; done
  echo "the server did not start: /tmp/confab-ab.log" >&2; exit 1
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }
if [ ! -e "$seeded" ]; then
  [ "$backend" = postgres ] && psql -q -h 127.0.0.1 -U postgres \
    -c "drop database if exists confab_ab" -c "create database confab_ab"
  start "$new"
  token=$(CONFAB_DATABASE_URL=$db "$new" token --server 2>/dev/null)
  $bench seed --url "http://127.0.0.1:$port" --token "$token" --users 2000 --conversations 5000 \
    --messages 100000 --heavy-user-conversations 1000 >/dev/null
  stop
  [ "$backend" = postgres ] && touch "$seeded"
fi
for _ in $(seq "$rounds"); do
  for v in old new; do
    bin=$old; [ $v = new ] && bin=$new
    start "$bin"
    token=$(CONFAB_DATABASE_URL=$db "$bin" token --server 2>/dev/null)
    for sc in ${scenarios//,/ }; do
      $bench run --url "http://127.0.0.1:$port" --token "$token" --concurrency "$conc" \
        --duration 1s --scenarios "$sc" >/dev/null 2>&1 || true
      perf stat -x, -e context-switches,task-clock -p "$pid" -o /tmp/confab-ab.perf -- sleep 6 &
      perfpid=$!
      ops=$($bench run --url "http://127.0.0.1:$port" --token "$token" --concurrency "$conc" \
        --duration 5s --scenarios "$sc" 2>&1 | awk -v s="$sc" '$1 == s && $2 ~ /^[0-9]+$/ {print $3; exit}') || true
      wait $perfpid || true
      if [ -z "$ops" ]; then echo "$v $sc: no result (see /tmp/confab-ab.log)"; continue; fi
      csw=$(awk -F, '$3 == "context-switches" {print $1}' /tmp/confab-ab.perf)
      ms=$(awk -F, '$3 == "task-clock" {print $1}' /tmp/confab-ab.perf)
      n=$(echo "$ops * 5" | bc)
      printf "%s %-12s c=%-3s %7s/s  %5.2f switches  %7.1f us CPU per request\n" \
        $v "$sc" "$conc" "$ops" "$(echo "$csw / $n" | bc -l)" "$(echo "$ms * 1000 / $n" | bc -l)"
    done
    stop
  done
done
