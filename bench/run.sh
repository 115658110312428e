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
rm -f "$out"/*.json "$out"/*.server

# The generator is a workspace member of its own (bench/floodgate-bench); all three share target/.
cargo build --release --quiet --workspace --bin floodgate --bin floodgate-bench --example noop_rls
bin=target/release
bench="$bin/floodgate-bench"

# shellcheck source=bench/processes.sh
. bench/processes.sh

redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$tmp/redis.log" 2>&1 &
redis_pid=$!; pids+=($redis_pid)
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

# A second opinion on the closed-loop ceiling from a generator in C (Debian's nghttp2-client),
# with the settings the issue's reference figures used: 4 connections, 32 streams each, 1 thread.
body=$tmp/request.grpc
"$bench" body --descriptors 1 >"$body"
h2load_run() { # name, port
  command -v h2load >/dev/null || return 0
  h2load -c 4 -m 32 -t 1 -D "${DURATION%s}" --warm-up-time="${WARMUP%s}" -d "$body" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://127.0.0.1:$2/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit" \
    >"$tmp/$1.h2load" 2>&1 || true
  python3 - "$tmp/$1.h2load" "$out/$1.json" "$1" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
rps = float(re.search(r"finished in [\d.]+s, ([\d.]+) req/s", text).group(1))
done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed", text)
mean = re.search(r"time for request:\s+\S+\s+\S+\s+(\S+)", text).group(1)
us = float(mean[:-2]) * (1000 if mean.endswith("ms") else 1) if mean.endswith("s") else 0
json.dump({"name": sys.argv[3], "mode": "h2load", "concurrency": 128, "descriptors": 1,
           "target_rate": None, "requests": int(done.group(1)), "rps": rps,
           "ok": int(done.group(2)), "over_limit": 0, "errors": int(done.group(3)),
           "p50_us": None, "p90_us": None, "p99_us": None, "p999_us": None, "max_us": None,
           "mean_us": round(us)}, open(sys.argv[2], "w"))
PY
  echo "$1 (h2load): $(grep -o 'finished in.*req/s' "$tmp/$1.h2load")"
}

# What Floodgate itself counted over a run (warm-up included): decisions, Redis script calls and
# round trips, and the p99 of its own request-duration histogram (the time inside the service,
# as a bucket bound), written to $out/NAME.server.
server_metrics() { # name, http port
  curl -s "127.0.0.1:$2/metrics" | python3 -c '
import json, sys
values, buckets = {}, {}
for line in sys.stdin:
    if line.startswith("#") or " " not in line:
        continue
    name, value = line.rsplit(" ", 1)
    metric = name.split("{")[0]
    values[metric] = values.get(metric, 0) + float(value)
    if metric == "floodgate_request_duration_seconds_bucket":
        le = name.split("le=\"")[1].split("\"")[0]
        buckets[le] = buckets.get(le, 0) + float(value)
requests = values.get("floodgate_requests_total", 0)
calls = values.get("floodgate_redis_script_calls_total", 0)
trips = values.get("floodgate_redis_round_trips_total", 0)
bounds = sorted((float(le), n) for le, n in buckets.items())
total = bounds[-1][1] if bounds else 0
p99 = next((le for le, n in bounds if n >= 0.99 * total), None) if total else None
json.dump({"requests": requests, "script_calls": calls, "round_trips": trips,
           "calls_per_decision": calls / max(requests, 1), "trips_per_call": trips / max(calls, 1),
           "server_p99_us": None if p99 in (None, float("inf")) else round(p99 * 1e6)},
          open(sys.argv[1], "w"))
' "$out/$1.server"
}

rates="5000 10000 20000 40000"

echo "== no-op gRPC server (the ceiling of the gRPC stack)"
noop_port=$(free_port)
"$bin/examples/noop_rls" "127.0.0.1:$noop_port" >"$tmp/noop.log" 2>&1 &
noop_pid=$!; pids+=($noop_pid)
wait_port "$noop_port"
run noop "127.0.0.1:$noop_port" --concurrency 128 --connections 4 --cpu-of "server=$noop_pid"
h2load_run noop-h2load "$noop_port"
for rate in $rates; do
  run "noop-open-$rate" "127.0.0.1:$noop_port" --rate "$rate" --connections 4 --cpu-of "server=$noop_pid"
done
stop "$noop_pid"

echo "== memory store"
read -r grpc http pid < <(start_floodgate memory)
# Paired rounds, the no-op server, the memory store and the Redis store (one descriptor, then
# three) back to back: on a shared machine the speed drifts by tens of percent within minutes,
# so the shares are read from runs made a few seconds apart.
"$bin/examples/noop_rls" "127.0.0.1:$noop_port" >"$tmp/noop-pairs.log" 2>&1 &
noop_pid=$!; pids+=($noop_pid)
wait_port "$noop_port"
read -r rgrpc _ rpid < <(start_floodgate redis-pairs --store redis --redis-url "$redis")
read -r sgrpc _ spid < <(start_floodgate sqlite-pairs --store sqlite --sqlite-path "$tmp/pairs.sqlite")
for round in $(seq "${ROUNDS:-5}"); do
  run "pair-noop-$round" "127.0.0.1:$noop_port" --concurrency 128 --connections 4 --cpu-of "server=$noop_pid"
  run "pair-memory-$round" "127.0.0.1:$grpc" --concurrency 128 --connections 4 --cpu-of "server=$pid"
  run "pair-redis-$round" "127.0.0.1:$rgrpc" --concurrency 128 --connections 4 --cpu-of "server=$rpid" \
    --cpu-of "redis=$redis_pid"
  run "pair-redis3-$round" "127.0.0.1:$rgrpc" --concurrency 128 --connections 4 --descriptors 3 \
    --cpu-of "server=$rpid" --cpu-of "redis=$redis_pid"
  run "pair-sqlite-$round" "127.0.0.1:$sgrpc" --concurrency 128 --connections 4 --cpu-of "server=$spid"
done
stop "$noop_pid"
stop "$rpid"
stop "$spid"
run memory-1desc "127.0.0.1:$grpc" --concurrency 128 --connections 4 --cpu-of "server=$pid"
h2load_run memory-h2load "$grpc"
stop "$pid"
for rate in $rates; do
  # A fresh Floodgate per rate, so its own latency histogram describes this rate alone.
  read -r grpc http pid < <(start_floodgate "memory-open-$rate")
  run "memory-open-$rate" "127.0.0.1:$grpc" --rate "$rate" --connections 4 --cpu-of "server=$pid"
  server_metrics "memory-open-$rate" "$http"
  stop "$pid"
done

echo "== Redis store (a fresh Floodgate per run, so its counters describe that run alone)"
redis_run() { # name, "floodgate args", bench args...
  local name=$1 extra=$2; shift 2
  # shellcheck disable=SC2086
  read -r grpc http pid < <(start_floodgate "$name" --store redis --redis-url "$redis" $extra)
  run "$name" "127.0.0.1:$grpc" "$@" --cpu-of "server=$pid" --cpu-of "redis=$redis_pid"
  server_metrics "$name" "$http"
  stop "$pid"
}
redis_run redis-1desc "" --concurrency 128 --connections 4
redis_run redis-3desc "" --concurrency 128 --connections 4 --descriptors 3
redis_run redis-64conc "" --concurrency 64 --connections 4
for rate in 5000 10000 20000; do
  redis_run "redis-open-$rate" "" --rate "$rate" --connections 4
done
redis_run redis-attack-cache "" --concurrency 128 --connections 4 --hot-share 0.9
redis_run redis-attack-nocache "--local-cache-size 0" --concurrency 128 --connections 4 --hot-share 0.9

echo "== SQLite store: one key, then a million distinct keys (the cost must not grow with them)"
for keys in 1 1000000; do
  read -r grpc http pid < <(start_floodgate "sqlite-keys-$keys" --store sqlite --sqlite-path "$tmp/keys-$keys.sqlite")
  run "sqlite-keys-$keys" "127.0.0.1:$grpc" --concurrency 128 --connections 4 --keys "$keys" --cpu-of "server=$pid"
  stop "$pid"
done

echo "== the Redis ceiling: the same script and pipelining, without gRPC"
"$bench" store --name redis-ceiling --redis-url "$redis" --concurrency 128 --duration "$DURATION" \
  --cpu-of "redis=$redis_pid" \
  --warmup "$WARMUP" --json "$out/redis-ceiling.json"
"$bench" store --name redis-ceiling-3desc --redis-url "$redis" --concurrency 128 --descriptors 3 \
  --cpu-of "redis=$redis_pid" \
  --duration "$DURATION" --warmup "$WARMUP" --json "$out/redis-ceiling-3desc.json"

echo "== memory per active key"
"$bench" memory --keys 1000000 | tee "$out/memory-per-key.txt"

echo "== no-op gRPC server again (to see how much the ceiling moves between runs)"
"$bin/examples/noop_rls" "127.0.0.1:$noop_port" >"$tmp/noop2.log" 2>&1 &
noop_pid=$!; pids+=($noop_pid)
wait_port "$noop_port"
run noop-again "127.0.0.1:$noop_port" --concurrency 128 --connections 4 --cpu-of "server=$noop_pid"
stop "$noop_pid"

python3 bench/report.py "$out"
