#!/usr/bin/env bash
# What the decision script costs Redis itself, as CPU instructions per call counted by
# callgrind: a figure that does not move with machine noise, unlike time. Prints one line per
# request shape (the algorithm, the number of checks, and how many requests share the call),
# per call and per request, beside two floors: a script that only returns, and one that only
# runs the commands a one-check fixed-window call needs (TIME, HINCRBY; the floors use a key of
# their own).
#
#   bench/script-cost.sh                 # decide.lua of this tree
#   bench/script-cost.sh other.lua       # another version, to compare
#
# Needs valgrind, redis-server, redis-cli and redis-benchmark. Binds 127.0.0.1 on a free port.
set -euo pipefail
cd "$(dirname "$0")/.."
script=${1:-src/store/redis/decide.lua}
calls=${CALLS:-20000}

tmp=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
valgrind --tool=callgrind --callgrind-out-file="$tmp/cg.%p" \
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no >"$tmp/log" 2>&1 &
vg=$!
trap 'kill $vg 2>/dev/null || true; wait $vg 2>/dev/null || true; rm -rf "$tmp"' EXIT
for _ in $(seq 600); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

cat >"$tmp/return.lua" <<'LUA'
return {1, 0, 0, 0}
LUA
cat >"$tmp/commands.lua" <<'LUA'
redis.call('TIME'); redis.call('HINCRBY', KEYS[1], '1700000000000:', 1)
return {1, 0, 0, 0}
LUA

check() { echo "$1 4000000000 3600000 1 ${2:-}"; } # algorithm, burst (token bucket only)
# name, script, requests per call, then the EVALSHA arguments after the SHA
measure() {
  local name=$1 file=$2 per=$3; shift 3
  local sha
  sha=$(redis-cli -p "$port" SCRIPT LOAD "$(cat "$file")")
  redis-benchmark -p "$port" -P 16 -n 2000 -q evalsha "$sha" "$@" >/dev/null 2>&1
  callgrind_control -z "$vg" >/dev/null 2>&1
  redis-benchmark -p "$port" -P 16 -n "$calls" -q evalsha "$sha" "$@" >/dev/null 2>&1
  callgrind_control -d "$vg" >/dev/null 2>&1
  local dump total
  dump=$(ls -t "$tmp"/cg."$vg".* | head -1)
  total=$(awk '/^totals:/ {print $2}' "$dump")
  printf '%-44s %10d %12d\n' "$name" $((total / calls)) $((total / calls / per))
}

# Eight requests in one call, as the dispatcher sends them under load (distinct keys).
shared() { # algorithm, burst: sets SHARED to the EVALSHA arguments
  local keys=() args=() i
  for i in $(seq 0 7); do keys+=("{b}m$1$i"); args+=(1 $(check "$1" "${2:-}")); done
  SHARED=(8 "${keys[@]}" "" 0 "${args[@]}")
}

# The same with three checks per request (distinct keys).
shared3() {
  local keys=() args=() i
  for i in $(seq 0 7); do
    keys+=("{b}x$i" "{b}y$i" "{b}z$i")
    args+=(3 $(check f) $(check f) $(check f))
  done
  SHARED=(24 "${keys[@]}" "" 0 "${args[@]}")
}

printf '%-44s %10s %12s\n' "call" "per call" "per request"
# shellcheck disable=SC2046 # the check arguments are meant to split
{
  measure "floor: return only" "$tmp/return.lua" 1 1 '{b}floor' "" 0 1 $(check f)
  measure "floor: TIME+HINCRBY only" "$tmp/commands.lua" 1 1 '{b}floor' "" 0 1 $(check f)
  measure "fixed window, 1 check" "$script" 1 1 '{b}k0' "" 0 1 $(check f)
  measure "sliding window, 1 check" "$script" 1 1 '{b}s0' "" 0 1 $(check s)
  measure "token bucket, 1 check" "$script" 1 1 '{b}t0' "" 0 1 $(check t 1000000)
  measure "fixed window, 3 checks" "$script" 1 3 '{b}k0' '{b}k1' '{b}k2' "" 0 3 \
    $(check f) $(check f) $(check f)
  shared f
  measure "fixed window, 1 check, 8 requests per call" "$script" 8 "${SHARED[@]}"
  shared3
  measure "fixed window, 3 checks, 8 requests per call" "$script" 8 "${SHARED[@]}"
  shared t 1000000
  measure "token bucket, 1 check, 8 requests per call" "$script" 8 "${SHARED[@]}"
}
