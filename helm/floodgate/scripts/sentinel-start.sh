#!/bin/sh
# Starts the Sentinel beside one Redis node of the bundled topology.
#
# It monitors the master the other Sentinels already know, or, on a fresh install, the first
# node. Sentinels then find each other and the replicas through the master.
#
# Environment: as for redis-start.sh, plus
#   QUORUM               Sentinels that must agree a master is down (default 2)
#   DOWN_AFTER_MS        how long a master may not answer before it is down (default 5000)
#   FAILOVER_TIMEOUT_MS  failover timeout (default 10000)
#   REDIS_SENTINEL       redis-sentinel binary (default redis-sentinel)
set -eu

: "${REDIS_PORT:=6379}" "${SENTINEL_PORT:=26379}" "${CONF_DIR:=/tmp}" "${QUORUM:=2}"
: "${DOWN_AFTER_MS:=5000}" "${FAILOVER_TIMEOUT_MS:=10000}" "${REDIS_PASSWORD:=}"
: "${REDIS_SENTINEL:=redis-sentinel}" "${REDIS_CLI:=redis-cli}" "${BIND_ADDRESS:=* -::*}"

first_node=$(echo "$REDIS_NODES" | awk '{print $1}')
master=""
for node in $REDIS_NODES; do
  [ "$node" = "$MY_HOST" ] && continue
  master=$("$REDIS_CLI" -h "$node" -p "$SENTINEL_PORT" --raw SENTINEL get-master-addr-by-name "$MASTER_NAME" 2>/dev/null | head -n 1 || true)
  [ -n "$master" ] && break
done
if [ -z "$master" ]; then
  master=$first_node
fi

conf="$CONF_DIR/sentinel.conf"
mkdir -p "$CONF_DIR"
{
  echo "port $SENTINEL_PORT"
  echo "bind $BIND_ADDRESS"
  echo "protected-mode no"
  echo "sentinel resolve-hostnames yes"
  echo "sentinel announce-hostnames yes"
  echo "sentinel announce-ip $MY_HOST"
  echo "sentinel announce-port $SENTINEL_PORT"
  echo "sentinel monitor $MASTER_NAME $master $REDIS_PORT $QUORUM"
  echo "sentinel down-after-milliseconds $MASTER_NAME $DOWN_AFTER_MS"
  echo "sentinel failover-timeout $MASTER_NAME $FAILOVER_TIMEOUT_MS"
  echo "sentinel parallel-syncs $MASTER_NAME 1"
  if [ -n "$REDIS_PASSWORD" ]; then
    echo "sentinel auth-pass $MASTER_NAME $REDIS_PASSWORD"
  fi
} > "$conf"

echo "sentinel on $MY_HOST monitoring $MASTER_NAME at $master"
exec "$REDIS_SENTINEL" "$conf"
