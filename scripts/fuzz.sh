#!/usr/bin/env bash
# Builds the cargo-fuzz targets in fuzz/ and runs each for N seconds (default 20, what CI
# runs; give more for a real session, e.g. `scripts/fuzz.sh 600`). Optional target names after
# the seconds run only those. Needs the nightly toolchain; installs cargo-fuzz when missing.
#
# Corpora grow in fuzz/corpus/<target>/ (not committed), starting from fuzz/seeds/<target>/.
# A contract violation stops its target and leaves the input in fuzz/artifacts/<target>/;
# replay it with `cargo +nightly fuzz run --sanitizer none <target> <file>`. The script runs every target and
# fails at the end if any found something.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-20}"
[ $# -gt 0 ] && shift
# No sanitizer: the parsers are safe Rust, where AddressSanitizer finds nothing a panic would
# not; without it the instrumented build of the dependency tree is much faster.
# The instrumented build of the whole dependency tree is long (~12 min of CPU from scratch):
# it is kept outside the clone, so CI runs on this machine after the first rebuild only what
# changed. Override with CONFAB_FUZZ_TARGET_DIR.
target_dir="${CONFAB_FUZZ_TARGET_DIR:-$HOME/.cache/confab/fuzz-target}"
mkdir -p "$target_dir"
flags=(--sanitizer none --fuzz-dir fuzz --target-dir "$target_dir")

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo +nightly install cargo-fuzz --locked
fi

targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list --fuzz-dir fuzz)
fi

echo "== building ${#targets[@]} fuzz targets"
start=$(date +%s)
cargo +nightly fuzz build "${flags[@]}"
echo "built in $(($(date +%s) - start)) s"

failed=()
for t in "${targets[@]}"; do
  echo "== $t for ${secs} s"
  mkdir -p "fuzz/corpus/$t"
  extra=()
  case "$t" in import_line | socket_event) extra=(-dict=fuzz/json.dict) ;; esac
  if ! cargo +nightly fuzz run "${flags[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$secs" -timeout=10 -max_len=8192 -print_final_stats=1 "${extra[@]}" \
    2>"fuzz/$t.log"; then
    # The contract that failed, then libFuzzer's report of the input.
    grep -A3 "panicked at" "fuzz/$t.log" | head -n 8 || true
    grep -A4 "^Failing input" "fuzz/$t.log" || tail -n 30 "fuzz/$t.log"
    failed+=("$t")
  else
    grep -E '^(stat::number_of_executed_units|Done)' "fuzz/$t.log" || true
  fi
  rm -f "fuzz/$t.log"
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found contract violations in: ${failed[*]} (inputs in fuzz/artifacts/)"
  exit 1
fi
echo "fuzzing: ${#targets[@]} targets, ${secs} s each, nothing found"
