#!/usr/bin/env bash
# fuzz.sh - runs every cargo-fuzz target in fuzz/ for a while (docs/reliability.md#fuzzing).
#
# Installs what it needs, each only if missing: the nightly toolchain (rustup, minimal profile)
# and cargo-fuzz (cargo install --locked). Builds the targets once (no sanitizer, debug
# assertions and overflow checks on, into fuzz/target), then runs each for SECONDS with the
# committed seeds (fuzz/corpus/<target>, read only) and a working corpus that grows across runs
# (fuzz/target/corpus-work/<target>, not committed). Prints per target the executions, the
# corpus size and whether it crashed; a crash input is kept in fuzz/artifacts/<target>/.
#
# Usage: scripts/fuzz.sh [SECONDS [TARGET...]]     (default: 60 seconds, every target)
#   scripts/fuzz.sh 15                 the smoke run scripts/test.sh does
#   scripts/fuzz.sh 300 topic_router   a longer run of one target
# Exit status: 0 if no target crashed, 1 if one did, 2 on a usage or build error.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "fuzz: $*"; }

SECONDS_PER_TARGET=${1:-60}
shift || true
[[ $SECONDS_PER_TARGET =~ ^[0-9]+$ ]] && ((SECONDS_PER_TARGET > 0)) || {
  say "usage: scripts/fuzz.sh [SECONDS [TARGET...]]"
  exit 2
}

# --- tools ------------------------------------------------------------------------------------

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  say "installing the nightly toolchain (cargo-fuzz needs it)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  say "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# --- build ------------------------------------------------------------------------------------

# No sanitizer: the code under test is safe Rust, and a run without one does several times more
# executions. Panics, failed checks, arithmetic overflow and stack overflow still crash.
BUILD=(-s none --debug-assertions)
mapfile -t ALL < <(cargo +nightly fuzz list)
TARGETS=("$@")
((${#TARGETS[@]})) || TARGETS=("${ALL[@]}")
for t in "${TARGETS[@]}"; do
  [[ " ${ALL[*]} " == *" $t "* ]] || { say "no such target: $t (have: ${ALL[*]})"; exit 2; }
done
say "building ${#ALL[@]} targets"
cargo +nightly fuzz build "${BUILD[@]}" || exit 2

# --- runs -------------------------------------------------------------------------------------

LOGS=fuzz/target/logs
mkdir -p "$LOGS"
crashed=()
printf '%-18s %12s %9s %8s  %s\n' target executions exec/s corpus result
for t in "${TARGETS[@]}"; do
  work=fuzz/target/corpus-work/$t
  mkdir -p "$work" "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log=$LOGS/$t.log
  rc=0
  cargo +nightly fuzz run "${BUILD[@]}" "$t" "$work" "fuzz/corpus/$t" -- \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -print_final_stats=1 >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  # After a crash there are no final stats: the last status line has the count.
  [[ -n $execs ]] || execs=$({ grep -oE '^#[0-9]+' "$log" || true; } | tail -1 | tr -d '#')
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  corpus=$(find "$work" "fuzz/corpus/$t" -type f | wc -l)
  if ((rc == 0)); then
    result=ok
  else
    crashed+=("$t")
    artifact=$({ grep -oE "Test unit written to [^ ]+" "$log" || true; } | tail -1 | sed 's/.* //')
    result="CRASHED (exit $rc${artifact:+, input $artifact}; log $log)"
  fi
  printf '%-18s %12s %9s %8s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$corpus" "$result"
done

passed=$((${#TARGETS[@]} - ${#crashed[@]}))
if ((${#crashed[@]})); then
  say "crashed: ${crashed[*]}; reproduce with: cargo +nightly fuzz run ${BUILD[*]} TARGET INPUT"
  echo "fuzz: $passed passed, ${#crashed[@]} failed"
  exit 1
fi
echo "fuzz: $passed passed, 0 failed"
