#!/usr/bin/env bash
# Runs the fuzz targets for a bounded time each: tests/fuzz/run.sh [SECONDS] [TARGET...]
# (default 60 seconds, every target). CI runs it with 60; a longer hunt is the same script with
# more seconds. Installs what it needs when missing: the nightly toolchain (rustup) and
# cargo-fuzz (cargo install; skipped when already installed).
#
# Targets run side by side, one per core (FUZZ_JOBS sets how many, default: the cores, at most
# 4). FUZZ_TARGET_DIR puts the build elsewhere than tests/fuzz/target, e.g. somewhere kept
# between CI runs: a rebuild after a change of src/ then takes minutes less.
#
# Each target starts from its seeds (tests/fuzz/seeds/<target>, in git), the crashes found
# before (tests/fuzz/regressions/<target>) and the corpus earlier runs on this machine grew
# (tests/fuzz/corpus/<target>, not in git). A crash stops that target, is saved under
# tests/fuzz/artifacts/<target>/ and fails the run once every target has had its turn.
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds=${1:-60}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=(config rls_request json_body admin_body replies)
fi
case $seconds in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac
jobs=${FUZZ_JOBS:-$(nproc)}
((jobs > 4)) && jobs=4

if ! cargo +nightly --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

export CARGO_INCREMENTAL=0
fuzz=(cargo +nightly fuzz)
common=(--fuzz-dir tests/fuzz)
[ -n "${FUZZ_TARGET_DIR:-}" ] && common+=(--target-dir "$FUZZ_TARGET_DIR")
started=$(date +%s)
"${fuzz[@]}" build "${common[@]}"
echo "fuzz: built in $(($(date +%s) - started)) s; ${#targets[@]} targets, $seconds s each, $jobs at a time"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# One target for $seconds; its libFuzzer output in $logs/<target>.log, its verdict in
# $logs/<target>.result.
fuzz_one() {
  local target=$1 corpus=tests/fuzz/corpus/$1 begun
  mkdir -p "$corpus" "tests/fuzz/artifacts/$target"
  local dirs=("$corpus" "tests/fuzz/seeds/$target")
  [ -d "tests/fuzz/regressions/$target" ] && dirs+=("tests/fuzz/regressions/$target")
  begun=$(date +%s)
  # The first directory takes what the run finds; -timeout flags an input slower than 10 s
  # as a hang; -rss_limit_mb keeps a memory blow-up a finding, not the machine's problem.
  if "${fuzz[@]}" run "${common[@]}" "$target" "${dirs[@]}" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$logs/$target.log" 2>&1; then
    local runs
    runs=$(grep -o 'number_of_executed_units: *[0-9]*' "$logs/$target.log" | grep -o '[0-9]*$' || true)
    echo "fuzz $target: ${runs:-?} inputs in $(($(date +%s) - begun)) s, no crash" >"$logs/$target.result"
  else
    echo "fuzz $target: FAILED after $(($(date +%s) - begun)) s (input under tests/fuzz/artifacts/$target/)" >"$logs/$target.result"
  fi
}

running=0
for target in "${targets[@]}"; do
  if ((running >= jobs)); then
    wait -n
    running=$((running - 1))
  fi
  fuzz_one "$target" &
  running=$((running + 1))
done
wait

failed=()
for target in "${targets[@]}"; do
  if grep -q FAILED "$logs/$target.result"; then
    tail -n 60 "$logs/$target.log"
    failed+=("$target")
  fi
  cat "$logs/$target.result"
done
echo "fuzz: $(($(date +%s) - started)) s in all"
if ((${#failed[@]})); then
  echo "fuzz: crashes in ${failed[*]}" >&2
  exit 1
fi
