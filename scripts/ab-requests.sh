#!/usr/bin/env bash
# Alternates builds of the server on one seeded database and reports, per scenario, the
# throughput and the server's thread switches and CPU per request (`perf stat` on its pid and
# the server's request counter, over the same 4 s under load), which vary less than throughput
# on a machine whose speed drifts. Nothing else should run meanwhile: beside other CPU work the
# server's threads park less and the switches drop too.
#
#   scripts/ab-requests.sh sqlite|postgres CONFAB_A CONFAB_B [CONFAB_C ...]
#
# Environment: ROUNDS (2; each round runs the builds in turn, starting one further along, so a
# steady drift of the machine does not favour one), SCENARIOS (healthz,sync_idle,page_before,
# inbox), CONCURRENCY (16), PORT (18600). The database (the small dataset of
# scripts/bench-run.sh) is seeded once per backend and kept: /tmp/confab-ab.db or the database
# confab_ab; `rm /tmp/confab-ab*-seeded` to seed again. DB_PER_BUILD=1 gives each build its
# own database, seeded by it (/tmp/confab-ab-K.db or confab_ab_K, K its place in the list), for
# builds whose migrations differ; the databases go by place, so seed again when the list
# changes. Needs perf and bc; build first (cargo build --release: its
# confab-bench drives the load).
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:?sqlite or postgres}; shift
[ $# -ge 2 ] || { echo "give two builds or more" >&2; exit 2; }
builds=("$@")
rounds=${ROUNDS:-2}; scenarios=${SCENARIOS:-healthz,sync_idle,page_before,inbox}
conc=${CONCURRENCY:-16}; port=${PORT:-18600}
bench=./target/release/confab-bench
case $backend in sqlite|postgres) ;; *) echo "sqlite or postgres" >&2; exit 2 ;; esac
# The database of build K (its place in the list): db, dbname (the file or the database) and
# seeded (the marker of its seeding).
use_db() {
  local sfx=
  [ "${DB_PER_BUILD:-0}" = 1 ] && sfx=-$1
  seeded=/tmp/confab-ab$sfx.$backend-seeded
  case $backend in
    sqlite) dbname=/tmp/confab-ab$sfx.db; db=sqlite://$dbname ;;
    postgres) dbname=confab_ab${sfx//-/_}; db=postgres://postgres@127.0.0.1/$dbname ;;
  esac
}
pid=
load=
trap '[ -n "$load" ] && kill $load 2>/dev/null; [ -n "$pid" ] && kill $pid 2>/dev/null; true' EXIT
start() {
  CONFAB_DATABASE_URL=$db CONFAB_ADDR=127.0.0.1:$port RUST_LOG=warn \
    CONFAB_RATE_LIMIT_PER_USER=0 CONFAB_RATE_LIMIT_PER_IP=0 "$1" serve >/tmp/confab-ab.log 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return; sleep 0.1; done
  echo "the server did not start: /tmp/confab-ab.log" >&2; exit 1
}
# Requests the server has answered, from its own counter.
requests() {
  { curl -sf "http://127.0.0.1:$port/metrics" || true; } \
    | awk '/^confab_http_requests_total/ {n += $NF} END {printf "%d", n}'
}
stop() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=; }
n_builds=${#builds[@]}
for k in $(seq 0 $((n_builds - 1))); do
  use_db "$k"
  [ -e "$seeded" ] && continue
  case $backend in
    sqlite) rm -f "$dbname" "$dbname-wal" "$dbname-shm" ;;
    postgres) psql -q -h 127.0.0.1 -U postgres \
      -c "drop database if exists $dbname" -c "create database $dbname" ;;
  esac
  start "${builds[$k]}"
  token=$(CONFAB_DATABASE_URL=$db "${builds[$k]}" token --server 2>/dev/null)
  $bench seed --url "http://127.0.0.1:$port" --token "$token" --users 2000 --conversations 5000 \
    --messages 100000 --heavy-user-conversations 1000 >/dev/null
  stop
  touch "$seeded"
  [ "${DB_PER_BUILD:-0}" = 1 ] || break
done
for r in $(seq 0 $((rounds - 1))); do
  for k in $(seq 0 $((n_builds - 1))); do
    b=$(((k + r) % n_builds))
    bin=${builds[$b]}
    use_db "$b"
    start "$bin"
    token=$(CONFAB_DATABASE_URL=$db "$bin" token --server 2>/dev/null)
    for sc in ${scenarios//,/ }; do
      # Load for 2 s of warm-up and 8 s measured; the server's own request counter and perf
      # are read over 4 s in the middle of it.
      $bench run --url "http://127.0.0.1:$port" --token "$token" --concurrency "$conc" \
        --warmup 2s --duration 8s --scenarios "$sc" >/dev/null 2>&1 &
      load=$!
      sleep 4
      before=$(requests); t0=$(date +%s%N)
      perf stat -x, -e context-switches,task-clock -p "$pid" -o /tmp/confab-ab.perf -- sleep 4 \
        || true
      after=$(requests); t1=$(date +%s%N)
      wait $load || true; load=
      csw=$(awk -F, '$3 == "context-switches" {print $1}' /tmp/confab-ab.perf 2>/dev/null || true)
      ms=$(awk -F, '$3 == "task-clock" {print $1}' /tmp/confab-ab.perf 2>/dev/null || true)
      n=$((after - before - 1))
      if [ "$n" -le 0 ] || [ -z "$csw" ] || [ -z "$ms" ]; then
        echo "$bin $sc: no result (see /tmp/confab-ab.log, /tmp/confab-ab.perf)"; continue
      fi
      printf "%-28s %-12s c=%-3s %7d/s  %5.2f switches  %7.1f us CPU per request\n" \
        "$bin" "$sc" "$conc" $((n * 1000000000 / (t1 - t0))) "$(echo "$csw / $n" | bc -l)" \
        "$(echo "$ms * 1000 / $n" | bc -l)"
    done
    stop
  done
done
