#!/usr/bin/env bash
# Alternates builds of the server on the seeded SQLite database of scripts/ab-requests.sh
# (/tmp/confab-ab.db; run that once first) and prints confab-bench's row for one scenario per
# run: throughput and the p50/p99 latencies, which ab-requests.sh does not report. Each round
# runs the builds in turn, starting one further along, so a steady drift of the machine does
# not favour one.
#
#   scripts/ab-latency.sh CONFAB_A CONFAB_B [CONFAB_C ...]
#
# Environment: ROUNDS (2), SCENARIO (send), CONCURRENCY (16), PORT (18600), DB
# (sqlite:///tmp/confab-ab.db). Build first (cargo build --release: its confab-bench drives the
# load).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { echo "give one build or more" >&2; exit 2; }
builds=("$@")
db=${DB:-sqlite:///tmp/confab-ab.db}; port=${PORT:-18600}; scenario=${SCENARIO:-send}
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; true' EXIT
for r in $(seq 0 $((${ROUNDS:-2} - 1))); do
  for k in $(seq 0 $((${#builds[@]} - 1))); do
    bin=${builds[$(((k + r) % ${#builds[@]}))]}
    CONFAB_DATABASE_URL=$db CONFAB_ADDR=127.0.0.1:$port RUST_LOG=warn \
      CONFAB_RATE_LIMIT_PER_USER=0 CONFAB_RATE_LIMIT_PER_IP=0 "$bin" serve >/tmp/confab-ab.log 2>&1 &
    pid=$!
    ready=
    for _ in $(seq 100); do
      curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && { ready=1; break; }
      sleep 0.1
    done
    [ -n "$ready" ] || { echo "$bin did not start: /tmp/confab-ab.log" >&2; exit 1; }
    token=$(CONFAB_DATABASE_URL=$db "$bin" token --server 2>/dev/null)
    row=$(./target/release/confab-bench run --url "http://127.0.0.1:$port" --token "$token" \
      --concurrency "${CONCURRENCY:-16}" --warmup 2s --duration 8s --scenarios "$scenario" 2>&1 \
      | grep -E "^$scenario c=" | head -1 || true)
    printf "%-28s %s\n" "$bin" "${row:-no result (see /tmp/confab-ab.log)}"
    kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=
  done
done
