#!/usr/bin/env bash
# Runs the chart's Redis/Sentinel bootstrap scripts (helm/floodgate/scripts/*.sh, the very files
# the chart's ConfigMap carries) against real redis-server and redis-sentinel processes on
# loopback. The three pods' host names are stood in for by 127.0.0.2-4, each node listening on its
# own address with the same ports (as pods do), ports asked from the OS.
#
# Checks, in order:
#   1. pods started in order form the topology: 1 master (ordinal 0), 2 replicas, 3 Sentinels agree
#   2. the master is killed: the Sentinels promote a replica, data written before survives
#   3. the old master restarted by its script rejoins as a replica of the new master
#   4. the master restarted at once (faster than the Sentinels notice) does not come back as an
#      empty master: its script waits for the Sentinels to fail over, and rejoins as a replica
#   5. a Sentinel restarted by its script rejoins with its old id; the Sentinels agree again;
#      the standalone topology (one node, no Sentinels) starts as master
# Redis and the Sentinels require a password, as the chart sets them up; the
# test also checks that a Sentinel refuses a client without it.
#   6. (when a Floodgate binary and the chart's rendered environment are given) Floodgate, started
#      with the environment the chart's Deployment sets (only addresses and paths replaced by
#      loopback ones; the Secrets it mounts as files written locally), reaches the master through
#      the Sentinels with their password, counts in
#      Redis (200, then 429), and answers again after the master is killed
# Every process started here is killed on exit, failure or not. Only loopback traffic.
#
# Environment: FLOODGATE_BIN (a floodgate binary) and FLOODGATE_CHART_ENV (a JSON list of the
# Deployment's env entries, as .ci/helm-check writes it) enable step 6; FLOODGATE_HELM_TEST (the
# helm test pod's script) is then run against that Floodgate too.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
scripts="$root/helm/floodgate/scripts"
hosts=(127.0.0.2 127.0.0.3 127.0.0.4)
master_name=floodgate
password='bootstrap-s3cret_0.x'

for bin in redis-server redis-sentinel redis-cli python3; do
  command -v "$bin" >/dev/null || { echo "sentinel_bootstrap_test: $bin is required (apt-get install -y redis-server redis-sentinel)" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/floodgate-bootstrap.XXXXXX")
declare -A pids=()   # "redis 127.0.0.2" -> pid (its own process group)
passed=false
cleanup() {
  for key in "${!pids[@]}"; do
    kill -KILL -- "-${pids[$key]}" 2>/dev/null || true
  done
  { wait; } 2>/dev/null || true
  if [ "$passed" != true ]; then
    echo "--- script logs (the test failed) ---"
    for log in "$work"/*/*.log; do
      [ -f "$log" ] || continue
      echo "== $log (the script's lines, then the server's last ones)"
      grep '^\[' "$log" || true
      grep -v '^\[' "$log" | tail -n 8
    done
  fi
  rm -rf "$work"
}
trap 'cleanup 2>/dev/null' EXIT
trap 'exit 130' INT TERM

# A TCP port free on every address (bound on 0.0.0.0 by the OS, then released).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("0.0.0.0", 0)); print(s.getsockname()[1])'
}
redis_port=$(free_port)
sentinel_port=$(free_port)
while [ "$sentinel_port" = "$redis_port" ]; do sentinel_port=$(free_port); done

step_started=$SECONDS
say() { echo "  [$((SECONDS - step_started))s] $*"; }
die() {
  echo "FAIL: $*" >&2
  local h
  for h in "${hosts[@]}"; do
    echo "  $h: role $(role "$h" || true); its Sentinel: master $(field "$h" ip || true)," \
      "flags $(field "$h" flags || true), replicas $(field "$h" num-slaves || true)," \
      "other Sentinels $(field "$h" num-other-sentinels || true)" >&2
  done
  exit 1
}

# wait_for DESCRIPTION SECONDS COMMAND...: polls COMMAND every 0.1 s until it succeeds.
wait_for() {
  local what=$1 limit=$2 deadline
  shift 2
  deadline=$(( $(date +%s%N) + limit * 1000000000 ))
  until "$@"; do
    [ "$(date +%s%N)" -lt "$deadline" ] || die "timed out after ${limit}s waiting for $what"
    sleep 0.1
  done
}

# run SCRIPT HOST: starts a bootstrap script as the chart's container would (own process group).
run() {
  local script=$1 host=$2 kind=${1%-start.sh}
  mkdir -p "$work/$host"
  env REDIS_NODES="${hosts[*]}" MY_HOST="$host" BIND_ADDRESS="$host" \
    REDIS_PORT="$redis_port" SENTINEL_PORT="$sentinel_port" MASTER_NAME="$master_name" \
    REDIS_PASSWORD="$password" SENTINEL_REQUIRE_PASSWORD=yes DATA_DIR="$work/$host/data" CONF_DIR="$work/$host/$kind" \
    QUORUM=2 DOWN_AFTER_MS=1000 FAILOVER_TIMEOUT_MS=3000 CLI_TIMEOUT=2 \
    MAXMEMORY=64mb MAXMEMORY_POLICY=volatile-ttl PERSISTENCE=no \
    setsid sh "$scripts/$script" >>"$work/$host/$kind.log" 2>&1 &
  pids["$kind $host"]=$!
}
stop() { # stop KIND HOST: kills that process like a crashed container
  local pid=${pids["$1 $2"]}
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset 'pids[$1 $2]'
}

redis() { local host=$1; shift; REDISCLI_AUTH="$password" redis-cli -h "$host" -p "$redis_port" "$@" 2>/dev/null; }
sentinel() { local host=$1; shift; REDISCLI_AUTH="$password" redis-cli -h "$host" -p "$sentinel_port" "$@" 2>/dev/null; }
role() { redis "$1" ROLE | head -n 1; }
is_up() { [ "$(redis "$1" PING)" = PONG ]; }
sentinel_up() { [ "$(sentinel "$1" PING)" = PONG ]; }
linked() { [ "$(role "$1")" = slave ] && redis "$1" INFO replication | grep -q '^master_link_status:up'; }
named_master() { sentinel "$1" SENTINEL get-master-addr-by-name "$master_name" | head -n 1; }
# field HOST NAME: a field of SENTINEL MASTER as that Sentinel sees it.
field() { sentinel "$1" SENTINEL MASTER "$master_name" | awk -v f="$2" 'prev == f {print; exit} {prev = $0}'; }

# The master the topology has settled on: every Sentinel names the same master, up, with 2
# replicas and 2 other Sentinels; it says it is master and the two other nodes replicate it with
# their link up. Prints it; fails when not settled, or when it is $1.
settled_master() {
  local h m="" n
  for h in "${hosts[@]}"; do
    n=$(field "$h" ip)
    [ -n "$n" ] && { [ -z "$m" ] || [ "$m" = "$n" ]; } || return 1
    m=$n
    [ "$(field "$h" flags)" = master ] || return 1
    [ "$(field "$h" num-slaves)" = 2 ] || return 1
    [ "$(field "$h" num-other-sentinels)" = 2 ] || return 1
  done
  [ "$m" != "${1:-}" ] && [ "$(role "$m")" = master ] || return 1
  for h in "${hosts[@]}"; do
    [ "$h" = "$m" ] || linked "$h" || return 1
  done
  echo "$m"
}
# Settled, on the same master 3 s later too: a Sentinel that lagged behind a failover can win a
# later election and fail over once more (Sentinel's design); wait that out.
settled_stably() {
  local first
  first=$(settled_master "${1:-}") || return 1
  sleep 3
  [ "$(settled_master "${1:-}")" = "$first" ]
}
# Every Sentinel names a master other than $1, the same one, and it says it is master.
promoted_instead_of() {
  local h m="" n
  for h in "${hosts[@]}"; do
    n=$(named_master "$h")
    [ -n "$n" ] && [ "$n" != "$1" ] && { [ -z "$m" ] || [ "$m" = "$n" ]; } || return 1
    m=$n
  done
  [ "$(role "$m")" = master ]
}
last_start() { grep "starting as" "$work/$1/redis.log" | tail -n 1; }
has_data() { [ "$(redis "$1" GET bootstrap)" = "$2" ]; }

echo "sentinel bootstrap test: redis port $redis_port, sentinel port $sentinel_port, nodes ${hosts[*]}"

# 1. The StatefulSet starts pods in order; each must be ready (Redis and Sentinel) before the next.
for host in "${hosts[@]}"; do
  run redis-start.sh "$host"
  wait_for "redis on $host" 10 is_up "$host"
  run sentinel-start.sh "$host"
  wait_for "sentinel on $host" 10 sentinel_up "$host"
done
[ "$(role "${hosts[0]}")" = master ] || die "${hosts[0]} (ordinal 0) is not the initial master"
wait_for "the topology to settle on ${hosts[0]}" 40 settled_stably
[ "$(settled_master)" = "${hosts[0]}" ] || die "the topology settled on $(settled_master), not ${hosts[0]}"
[ "$(redis-cli -h "${hosts[0]}" -p "$sentinel_port" SENTINEL get-master-addr-by-name "$master_name" 2>&1 | head -n 1)" != "${hosts[0]}" ] \
  || die "a Sentinel answered a client without the password"
[ "$(redis "${hosts[1]}" CONFIG GET maxmemory | tail -n 1)" = 67108864 ] || die "maxmemory is not set"
[ "$(redis "${hosts[1]}" CONFIG GET maxmemory-policy | tail -n 1)" = volatile-ttl ] || die "maxmemory-policy is not set"
[ -z "$(redis "${hosts[1]}" CONFIG GET save | tail -n 1)" ] || die "snapshots are on without persistence"
say "ok 1: ${hosts[0]} master, ${hosts[1]} and ${hosts[2]} replicas, 3 Sentinels agree"
redis "${hosts[0]}" SET bootstrap written-before-the-kill >/dev/null
[ "$(redis "${hosts[0]}" WAIT 2 2000)" = 2 ] || die "the write did not reach both replicas"

# 2. Kill the master: the Sentinels promote a replica.
step_started=$SECONDS
old=${hosts[0]}
stop redis "$old"
wait_for "the Sentinels to promote a replica" 60 promoted_instead_of "$old"
master=$(named_master "${hosts[1]}")
has_data "$master" written-before-the-kill || die "the new master $master lost the data"
say "ok 2: master $old killed; the Sentinels promoted $master, the data survived"

# 3. The old master's container restarts with the same script: it rejoins as a replica.
step_started=$SECONDS
run redis-start.sh "$old"
wait_for "the topology to settle with $old back" 60 settled_stably "$old"
master=$(settled_master)
last_start "$old" | grep -q "starting as replica of" || die "$old did not start as a replica"
has_data "$old" written-before-the-kill || die "$old does not have the data"
say "ok 3: $old restarted by its script and rejoined as a replica (of $master)"

# 4. The master restarts at once, before the Sentinels would notice (down-after is 1 s): its
#    script must wait for a replica to be promoted rather than come back as an empty master.
step_started=$SECONDS
old=$master
redis "$old" SET bootstrap written-before-the-restart >/dev/null
[ "$(redis "$old" WAIT 2 2000)" = 2 ] || die "the write did not reach both replicas"
stop redis "$old"
run redis-start.sh "$old"
wait_for "the topology to settle on a master other than $old" 60 settled_stably "$old"
master=$(settled_master)
last_start "$old" | grep -q "starting as replica of" || die "$old did not start as a replica: $(last_start "$old")"
has_data "$master" written-before-the-restart || die "the data was lost in the quick restart"
has_data "$old" written-before-the-restart || die "$old does not have the data"
say "ok 4: $old restarted at once; its script waited for a promotion and rejoined as a replica (of $master)"

# 5. A Sentinel container restarts: it rejoins, with its old id, and all agree again.
step_started=$SECONDS
victim=${hosts[1]}
id_before=$(sentinel "$victim" SENTINEL myid)
stop sentinel "$victim"
run sentinel-start.sh "$victim"
wait_for "the Sentinel on $victim" 10 sentinel_up "$victim"
[ "$(sentinel "$victim" SENTINEL myid)" = "$id_before" ] || die "the restarted Sentinel has a new id"
wait_for "the topology to settle after a Sentinel restart" 40 settled_stably
[ "$(settled_master)" = "$master" ] || die "the master moved from $master to $(settled_master)"
say "ok 5: the Sentinel on $victim restarted and rejoined; all 3 agree on $master"

# The standalone topology (one bundled node, no Sentinels: the chart sets SENTINEL_PORT=1): the
# same script starts it as master.
step_started=$SECONDS
standalone=127.0.0.5
mkdir -p "$work/$standalone"
env REDIS_NODES="$standalone" MY_HOST="$standalone" BIND_ADDRESS="$standalone" REDIS_PORT="$redis_port" \
  SENTINEL_PORT=1 MASTER_NAME="$master_name" REDIS_PASSWORD="$password" DATA_DIR="$work/$standalone/data" \
  CONF_DIR="$work/$standalone/redis" CLI_TIMEOUT=2 setsid sh "$scripts/redis-start.sh" >>"$work/$standalone/redis.log" 2>&1 &
pids["redis $standalone"]=$!
wait_for "the standalone node" 10 is_up "$standalone"
[ "$(role "$standalone")" = master ] || die "the standalone node is not a master"
say "ok 5: standalone topology: the script starts the one node as master"

# 6. Floodgate as the chart configures it, against this topology.
floodgate_bin=${FLOODGATE_BIN:-}
chart_env=${FLOODGATE_CHART_ENV:-}
if [ -z "$floodgate_bin" ] || [ -z "$chart_env" ]; then
  echo "  skip 6: no FLOODGATE_BIN / FLOODGATE_CHART_ENV"
else
  step_started=$SECONDS
  command -v curl >/dev/null || die "step 6 needs curl"
  http_port=$(free_port)
  grpc_port=$(free_port)
  mkdir -p "$work/floodgate/config"
  cat >"$work/floodgate/config/helm-test.yaml" <<'YAML'
domain: helm-test
descriptors:
  - key: probe
    rate_limit:
      unit: hour
      requests_per_unit: 2
YAML
  # The chart's env, secrets resolved to the password (a mounted Secret's file, made locally),
  # addresses and paths made local.
  mkdir -p "$work/floodgate/secrets"
  mapfile -t fg_env < <(python3 - "$chart_env" <<PY
import json, os, sys
overrides = {
    "FLOODGATE_CONFIG": "$work/floodgate/config",
    "FLOODGATE_GRPC_ADDR": "127.0.0.1:$grpc_port",
    "FLOODGATE_HTTP_ADDR": "127.0.0.1:$http_port",
    "FLOODGATE_REDIS_SENTINELS": ",".join(f"{h}:$sentinel_port" for h in "${hosts[*]}".split()),
}
for item in json.load(open(sys.argv[1])):
    name = item["name"]
    if name in overrides:
        value = overrides[name]
    elif "secretKeyRef" in item.get("valueFrom", {}):
        value = "$password"
    elif item.get("value", "").startswith("/etc/floodgate/secrets/"):
        value = os.path.join("$work/floodgate/secrets", os.path.basename(item["value"]))
        with open(value, "w") as secret:
            secret.write("$password")
    else:
        value = item.get("value", "")
    print(f"{name}={value}")
PY
)
  printf '%s\n' "${fg_env[@]}" | grep -q '^FLOODGATE_REDIS_SENTINEL_PASSWORD_FILE=' || die "the chart gives Floodgate no Sentinel password file"
  [ "$(printf '%s\n' "${fg_env[@]}" | sed -n 's/^FLOODGATE_REDIS_MASTER_NAME=//p')" = "$master_name" ] || die "the chart's master name is not $master_name"
  env -i PATH="$PATH" "${fg_env[@]}" setsid "$floodgate_bin" serve >>"$work/floodgate/floodgate.log" 2>&1 &
  pids["floodgate 127.0.0.1"]=$!
  healthy() { [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$http_port/healthcheck")" = 200 ]; }
  ask() { curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$http_port/json" \
    -d "{\"domain\":\"helm-test\",\"descriptors\":[{\"entries\":[{\"key\":\"probe\",\"value\":\"$1\"}]}]}"; }
  wait_for "Floodgate healthy on the bundled topology" 30 healthy
  codes="$(ask a) $(ask a) $(ask a)"
  [ "$codes" = "200 200 429" ] || die "Floodgate answered $codes, not 200 200 429"
  redis "$master" --scan --pattern 'floodgate:*' | grep -q . || die "no floodgate:* key on the master $master"
  say "ok 6: Floodgate with the chart's environment found master $master through the Sentinels, counted there (200 200 429)"
  if [ -n "${FLOODGATE_HELM_TEST:-}" ]; then
    FLOODGATE_URL="http://127.0.0.1:$http_port" sh "$FLOODGATE_HELM_TEST" >"$work/floodgate/helm-test.log" 2>&1 \
      || { cat "$work/floodgate/helm-test.log"; die "the chart's helm test script failed against Floodgate"; }
    say "ok 6: the chart's helm test script passes against it: $(tail -n 1 "$work/floodgate/helm-test.log")"
  fi

  step_started=$SECONDS
  old=$master
  stop redis "$old"
  answers_again() { healthy && [ "$(ask b)" = 200 ]; }
  wait_for "Floodgate answering after the master's failover" 60 answers_again
  say "ok 7: master $old killed; Floodgate answers again through the new master"
fi

passed=true
echo "sentinel bootstrap test: passed"
