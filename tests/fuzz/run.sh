#!/usr/bin/env bash
# Runs the fuzz targets for a bounded time each: tests/fuzz/run.sh [SECONDS] [TARGET...]
# (default 60 seconds, every target). CI runs it with 60; a longer hunt is the same script with
# more seconds. Installs what it needs when missing: the nightly toolchain (rustup) and
# cargo-fuzz (cargo install; skipped when already installed).
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

if ! cargo +nightly --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

fuzz=(cargo +nightly fuzz)
# One build for every target (incremental artifacts would only cost disk).
CARGO_INCREMENTAL=0 "${fuzz[@]}" build --fuzz-dir tests/fuzz

failed=()
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in "${targets[@]}"; do
  corpus=tests/fuzz/corpus/$target
  mkdir -p "$corpus" "tests/fuzz/artifacts/$target"
  dirs=("$corpus" "tests/fuzz/seeds/$target")
  [ -d "tests/fuzz/regressions/$target" ] && dirs+=("tests/fuzz/regressions/$target")
  started=$(date +%s)
  # The first directory takes what the run finds; -timeout flags an input slower than 10 s
  # as a hang; -rss_limit_mb keeps a memory blow-up a finding, not the machine's problem.
  if CARGO_INCREMENTAL=0 "${fuzz[@]}" run --fuzz-dir tests/fuzz "$target" "${dirs[@]}" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1; then
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    echo "fuzz $target: ${runs:-?} inputs in $(($(date +%s) - started)) s, no crash"
  else
    tail -n 60 "$log"
    echo "fuzz $target: FAILED after $(($(date +%s) - started)) s (input under tests/fuzz/artifacts/$target/)"
    failed+=("$target")
  fi
done
if ((${#failed[@]})); then
  echo "fuzz: crashes in ${failed[*]}" >&2
  exit 1
fi
