#!/usr/bin/env bash
# Instructions per decision on the decide path (match, plan, memory store, decision), counted by
# callgrind: two runs of examples/decide_cost.rs that differ by 10,000 decisions, so start-up
# and config loading cancel out. Prints one line per descriptor count.
#   bash bench/decide-cost.sh
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
cargo build --release --quiet --example decide_cost
bin=target/release/examples/decide_cost
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
total() {
  valgrind --tool=callgrind --callgrind-out-file="$out/cg" "$bin" "$1" "$2" >/dev/null 2>"$out/log"
  sed -n 's/^summary: //p' "$out/cg"
}
for descriptors in 1 3; do
  small=$(total "$descriptors" 1000)
  large=$(total "$descriptors" 11000)
  echo "descriptors=$descriptors instructions_per_decision=$(( (large - small) / 10000 ))"
done
