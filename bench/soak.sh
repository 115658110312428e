#!/usr/bin/env bash
# The chaos soak: three Floodgate replicas (the release binary) on a Redis Sentinel set (1 master,
# 2 replicas, 3 Sentinels) under open-loop load with known limits, while faults are injected on a
# schedule: the master killed, the master frozen, a replica killed, a broken config reloaded, a
# burst past --max-concurrent-requests. A ledger of every answer checks admissions against the
# limits, deadlines, recovery times and memory (`floodgate-bench soak`, docs/reliability.md).
#
#   bench/soak.sh                    # 200 s, as CI runs it
#   bench/soak.sh --duration 900     # 15 minutes
#   SOAK_FLOODGATE_ARGS="--redis-timeout 100ms" bench/soak.sh   # more flags for every replica
#
# Other options go to `floodgate-bench soak` (see `target/release/floodgate-bench soak --help`).
# Writes bench/results/soak-<UTC time>.json and .md and exits non-zero when the ledger fails the
# run (over-admission beyond a failover's measured loss, a call past its deadline, a master kill
# recovered in more than 3 s, a replica that never recovered). Needs redis-server and
# redis-sentinel; everything binds 127.0.0.1 on free ports, is bounded in time, and every process
# it started is killed on exit, also on failure or interruption.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=200
pass=()
while (($#)); do
  case $1 in
    --duration) duration=${2:-}; shift $(($# > 1 ? 2 : 1)) ;;
    --duration=*) duration=${1#*=}; shift ;;
    *) pass+=("$1"); shift ;;
  esac
done
if ! [[ $duration =~ ^[0-9]+$ ]] || ((duration < 60)); then
  echo "soak: --duration takes whole seconds, at least 60 (got '$duration')" >&2
  exit 64
fi
for tool in redis-server redis-sentinel timeout; do
  command -v "$tool" >/dev/null || { echo "soak: needs $tool" >&2; exit 1; }
done

cargo build --release --quiet --workspace --bin floodgate --bin floodgate-bench

out=bench/results
mkdir -p "$out"
name="$out/soak-$(date -u +%Y%m%dT%H%M%SZ)"
extra=()
for arg in ${SOAK_FLOODGATE_ARGS:-}; do extra+=("--floodgate-arg=$arg"); done

# `timeout` bounds the whole soak (start-up, the run, the report) and runs it in a process group
# of its own, which every process the soak starts joins: the trap kills that group, whatever
# happened to the soak itself.
group=
cleanup() {
  if [[ -n $group ]]; then kill -KILL -- "-$group" 2>/dev/null || true; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

timeout --kill-after=10 $((duration + 240)) target/release/floodgate-bench soak \
  --floodgate target/release/floodgate --config bench/config/soak/soak.yaml \
  --duration "${duration}s" --json "$name.json" --markdown "$name.md" \
  ${extra[@]+"${extra[@]}"} ${pass[@]+"${pass[@]}"} &
group=$!
status=0
wait "$group" || status=$?
case $status in
  0) echo "soak: passed; $name.json, $name.md" ;;
  2) echo "soak: FAILED (see the verdict above); $name.json, $name.md" >&2 ;;
  124) echo "soak: FAILED: did not finish within $((duration + 240)) s" >&2 ;;
  *) echo "soak: FAILED: exit status $status" >&2 ;;
esac
exit "$status"
