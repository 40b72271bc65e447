#!/usr/bin/env bash
# Start to ready: milliseconds from spawning `confab serve` on an existing database until
# GET /readyz answers 200, polled every 5 ms. Best and worst of N runs.
#   scripts/start-to-ready.sh DATABASE_URL [runs]
set -euo pipefail
cd "$(dirname "$0")/.."
url=${1:?database url}
runs=${2:-5}
port=${PORT:-18530}
times=()
for _ in $(seq "$runs"); do
  start=$(date +%s%N)
  CONFAB_DATABASE_URL=$url CONFAB_ADDR=127.0.0.1:$port RUST_LOG=warn ./target/release/confab serve \
    >/dev/null 2>&1 &
  pid=$!
  until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do sleep 0.005; done
  end=$(date +%s%N)
  times+=($(( (end - start) / 1000000 )))
  kill "$pid"; wait "$pid" 2>/dev/null || true
done
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
echo "start to ready on $url: best $(echo "$sorted" | head -1) ms, worst $(echo "$sorted" | tail -1) ms over $runs runs"
