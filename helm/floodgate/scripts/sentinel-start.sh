#!/bin/sh
# Starts the Sentinel beside one Redis node of the bundled topology.
#
# It monitors the master the other Sentinels name (by majority), else a node that reports itself
# master, else (a fresh install) the first node. The Sentinels then find each other, and the
# replicas, through the master.
#
# Environment: see lib.sh, plus
#   CONF_DIR             where sentinel.conf goes (/tmp; Sentinel rewrites it)
#   BIND_ADDRESS         addresses to listen on (default all)
#   QUORUM               Sentinels that must agree a master is down (default 2)
#   DOWN_AFTER_MS        how long a master may not answer before it is down (default 5000)
#   FAILOVER_TIMEOUT_MS  failover timeout (default 10000)
#   SENTINEL_REQUIRE_PASSWORD  yes: this Sentinel requires REDIS_PASSWORD too (the chart sets it)
#   REDIS_SENTINEL       redis-sentinel binary (default redis-sentinel)
set -eu
. "$(dirname "$0")/lib.sh"

: "${CONF_DIR:=/tmp}" "${QUORUM:=2}" "${DOWN_AFTER_MS:=5000}" "${FAILOVER_TIMEOUT_MS:=10000}"
: "${REDIS_SENTINEL:=redis-sentinel}" "${BIND_ADDRESS:=* -::*}" "${SENTINEL_REQUIRE_PASSWORD:=no}"

master=$(sentinel_master "$MY_HOST")
[ -n "$master" ] || master=$(node_reporting_master "")
[ -n "$master" ] || master=$first_node

conf="$CONF_DIR/sentinel.conf"
mkdir -p "$CONF_DIR"
# Keep this Sentinel's id across container restarts (the conf lives in the pod's emptyDir), so
# the other Sentinels do not count it twice.
myid=$(awk '$1 == "sentinel" && $2 == "myid" {print $3}' "$conf" 2>/dev/null || true)
{
  [ -z "$myid" ] || echo "sentinel myid $myid"
  echo "port $SENTINEL_PORT"
  echo "bind $BIND_ADDRESS"
  echo "protected-mode no"
  echo "dir $CONF_DIR"
  echo "sentinel resolve-hostnames yes"
  echo "sentinel announce-hostnames yes"
  echo "sentinel announce-ip $MY_HOST"
  echo "sentinel announce-port $SENTINEL_PORT"
  echo "sentinel monitor $MASTER_NAME $master $REDIS_PORT $QUORUM"
  echo "sentinel down-after-milliseconds $MASTER_NAME $DOWN_AFTER_MS"
  echo "sentinel failover-timeout $MASTER_NAME $FAILOVER_TIMEOUT_MS"
  echo "sentinel parallel-syncs $MASTER_NAME 1"
  if [ -n "$REDIS_PASSWORD" ]; then
    echo "sentinel auth-pass $MASTER_NAME \"$REDIS_PASSWORD\""
    if [ "$SENTINEL_REQUIRE_PASSWORD" = yes ]; then
      # Clients (Floodgate) and the other Sentinels, which use the same password, must log in.
      echo "requirepass \"$REDIS_PASSWORD\""
    fi
  fi
} > "$conf"
chmod 600 "$conf"

log "Sentinel monitoring $MASTER_NAME at $master"
exec "$REDIS_SENTINEL" "$conf"
