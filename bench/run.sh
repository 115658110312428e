#!/usr/bin/env bash
# The benchmark suite, on this machine, over loopback: prints one table and writes the JSON
# results, the table (markdown) and a latency-versus-throughput plot (SVG) to bench/results/.
#
#   bench/run.sh            # full runs (10 s each)
#   DURATION=3s bench/run.sh  # quicker
#
# Needs redis-server and redis-cli (apt-get install redis-server). Everything binds 127.0.0.1
# on free ports and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
out=bench/results
mkdir -p "$out"
rm -f "$out"/*.json

cargo build --release --quiet --bin floodgate --bin floodgate-bench --example noop_rls
bin=target/release
bench="$bin/floodgate-bench"

pids=()
tmp=$(mktemp -d)
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; return 1; }

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$tmp/redis.log" 2>&1 &
pids+=($!)
wait_port "$redis_port"
redis="redis://127.0.0.1:$redis_port/0"

start_floodgate() { # name, extra args...
  local name=$1; shift
  local grpc http
  grpc=$(free_port); http=$(free_port)
  RUST_LOG=warn "$bin/floodgate" serve --config bench/config --grpc-addr "127.0.0.1:$grpc" \
    --http-addr "127.0.0.1:$http" "$@" >"$tmp/$name.log" 2>&1 &
  pids+=($!)
  wait_port "$grpc"
  echo "$grpc $http $!"
}

stop() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

run() { # name, address, extra bench args...
  local name=$1 addr=$2; shift 2
  "$bench" grpc --name "$name" --addr "$addr" --duration "$DURATION" --warmup "$WARMUP" \
    --json "$out/$name.json" "$@"
}

evalsha_calls() { redis-cli -p "$redis_port" INFO commandstats | awk -F'[=,:]' '/cmdstat_evalsha:/ {print $3}' | tr -d '\r'; }

echo "== no-op gRPC server (the ceiling of the gRPC stack)"
noop_port=$(free_port)
"$bin/examples/noop_rls" "127.0.0.1:$noop_port" >"$tmp/noop.log" 2>&1 &
noop_pid=$!; pids+=($noop_pid)
wait_port "$noop_port"
run noop "127.0.0.1:$noop_port" --concurrency 128 --connections 4
stop "$noop_pid"

echo "== memory store"
read -r grpc http pid < <(start_floodgate memory)
run memory-1desc "127.0.0.1:$grpc" --concurrency 128 --connections 4
for rate in 5000 10000 20000 40000; do
  run "memory-open-$rate" "127.0.0.1:$grpc" --rate "$rate" --connections 4
done
stop "$pid"

echo "== Redis store"
read -r grpc http pid < <(start_floodgate redis --store redis --redis-url "$redis")
before=$(evalsha_calls || echo 0)
run redis-1desc "127.0.0.1:$grpc" --concurrency 128 --connections 4
after=$(evalsha_calls || echo 0)
decisions=$(python3 -c "import json;print(json.load(open('$out/redis-1desc.json'))['requests'])")
run redis-3desc "127.0.0.1:$grpc" --concurrency 128 --connections 4 --descriptors 3
for rate in 5000 10000 20000; do
  run "redis-open-$rate" "127.0.0.1:$grpc" --rate "$rate" --connections 4
done
metrics=$(curl -s "127.0.0.1:$http/metrics")
trips=$(echo "$metrics" | awk '/^floodgate_redis_round_trips_total/ {print $2}')
calls=$(echo "$metrics" | awk '/^floodgate_redis_script_calls_total/ {print $2}')
run redis-attack-cache "127.0.0.1:$grpc" --concurrency 128 --connections 4 --hot-share 0.9
stop "$pid"
read -r grpc http pid < <(start_floodgate redis-nocache --store redis --redis-url "$redis" --local-cache-size 0)
run redis-attack-nocache "127.0.0.1:$grpc" --concurrency 128 --connections 4 --hot-share 0.9
stop "$pid"

echo "== the Redis ceiling: the same script and pipelining, without gRPC"
"$bench" store --name redis-ceiling --redis-url "$redis" --concurrency 128 --duration "$DURATION" \
  --warmup "$WARMUP" --json "$out/redis-ceiling.json"

echo "== memory per active key"
"$bench" memory --keys 1000000 | tee "$out/memory-per-key.txt"

python3 bench/report.py "$out" \
  --evalsha "$(( ${after:-0} - ${before:-0} ))" --decisions "$decisions" \
  --round-trips "${trips:-0}" --script-calls "${calls:-0}"
