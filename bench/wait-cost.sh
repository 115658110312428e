#!/usr/bin/env bash
# What `--redis-wait-replicas 1` costs: a Redis master with one replica, one Floodgate that
# answers at once and one that waits for the replica's acknowledgement (WAIT 1), measured in
# paired rounds seconds apart: closed-loop decisions per second (128 in flight) and the latency
# of an open-loop 5,000 decisions per second.
#
#   bench/wait-cost.sh              # 5 rounds of 10 s
#   ROUNDS=3 DURATION=5s bench/wait-cost.sh
#
# Writes bench/results/wait-*.json and prints the medians. 127.0.0.1 and free ports only; every
# process is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
ROUNDS=${ROUNDS:-5}
out=bench/results
mkdir -p "$out"
rm -f "$out"/wait-*.json

cargo build --release --quiet --workspace --bin floodgate --bin floodgate-bench
bin=target/release

# shellcheck source=bench/processes.sh
. bench/processes.sh

master=$(free_port)
replica=$(free_port)
redis-server --port "$master" --bind 127.0.0.1 --save "" --appendonly no >"$tmp/master.log" 2>&1 &
pids+=($!)
wait_port "$master"
redis-server --port "$replica" --bind 127.0.0.1 --save "" --appendonly no \
  --replicaof 127.0.0.1 "$master" >"$tmp/replica.log" 2>&1 &
pids+=($!)
wait_port "$replica"
for _ in $(seq 200); do
  redis-cli -p "$replica" info replication | grep -q 'master_link_status:up' && break
  sleep 0.05
done

start_floodgate() { # name, extra args...
  local name=$1; shift
  local grpc http
  grpc=$(free_port); http=$(free_port)
  RUST_LOG=warn "$bin/floodgate" serve --config bench/config --grpc-addr "127.0.0.1:$grpc" \
    --http-addr "127.0.0.1:$http" --store redis --redis-url "redis://127.0.0.1:$master/0" \
    --redis-timeout 1s "$@" >"$tmp/$name.log" 2>&1 &
  pids+=($!)
  wait_port "$grpc"
  echo "$grpc"
}

plain=$(start_floodgate plain)
waiting=$(start_floodgate waiting --redis-wait-replicas 1)

run() { # name, port, bench args...
  local name=$1 port=$2; shift 2
  "$bin/floodgate-bench" grpc --name "$name" --addr "127.0.0.1:$port" --duration "$DURATION" \
    --warmup "$WARMUP" --connections 4 --json "$out/$name.json" "$@"
}

for round in $(seq "$ROUNDS"); do
  run "wait-off-closed-$round" "$plain" --concurrency 128
  run "wait-on-closed-$round" "$waiting" --concurrency 128
  run "wait-off-open-$round" "$plain" --rate 5000
  run "wait-on-open-$round" "$waiting" --rate 5000
done

python3 - "$out" <<'PY'
import glob, json, statistics, sys
out = sys.argv[1]
def runs(kind):
    return [json.load(open(f)) for f in sorted(glob.glob(f"{out}/wait-{kind}-*.json"))]
def median(kind, field):
    return statistics.median(r[field] for r in runs(kind) if r[field] is not None)
off, on = median("off-closed", "rps"), median("on-closed", "rps")
print(f"closed loop, 128 in flight: {off:,.0f} decisions/s without WAIT, {on:,.0f} with WAIT 1 "
      f"({on / off:.0%})")
for field in ("p50_us", "p99_us"):
    a, b = median("off-open", field), median("on-open", field)
    print(f"open loop 5,000/s, {field[:-3]}: {a:,.0f} µs without WAIT, {b:,.0f} µs with WAIT 1 "
          f"({b / a:.2f}x)")
errors = sum(r["errors"] for r in runs("on-closed") + runs("on-open"))
print(f"errors with WAIT 1: {errors}")
PY
