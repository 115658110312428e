#!/bin/sh
# Starts one Redis node of the bundled Sentinel topology, as master or as replica.
#
# Who is master: whatever the Sentinels say. When no Sentinel knows a master yet (a fresh
# install), the first node is; every other node replicates it. A node that restarts after a
# failover therefore comes back as a replica of the new master, never as a second master.
#
# Environment (set by the chart; tests set loopback values):
#   REDIS_NODES     space-separated host names of all Redis nodes, first one first
#   MY_HOST         this node's host name (one of REDIS_NODES)
#   REDIS_PORT      Redis port (every node)            SENTINEL_PORT  Sentinel port (every node)
#   MASTER_NAME     the name the Sentinels monitor     REDIS_PASSWORD optional
#   DATA_DIR        Redis data directory               CONF_DIR       where to write redis.conf
#   BIND_ADDRESS    addresses to listen on (default: all; tests give each node its own)
#   REDIS_SERVER    redis-server binary (default redis-server); REDIS_CLI likewise
set -eu

: "${REDIS_PORT:=6379}" "${SENTINEL_PORT:=26379}" "${DATA_DIR:=/data}" "${CONF_DIR:=/tmp}"
: "${REDIS_SERVER:=redis-server}" "${REDIS_CLI:=redis-cli}" "${REDIS_PASSWORD:=}"
: "${BIND_ADDRESS:=* -::*}"

first_node=$(echo "$REDIS_NODES" | awk '{print $1}')

# Ask each Sentinel (they run beside every node) for the current master.
current_master() {
  for node in $REDIS_NODES; do
    answer=$("$REDIS_CLI" -h "$node" -p "$SENTINEL_PORT" --raw SENTINEL get-master-addr-by-name "$MASTER_NAME" 2>/dev/null | head -n 1 || true)
    if [ -n "$answer" ]; then
      echo "$answer"
      return 0
    fi
  done
  return 1
}

master=$(current_master || true)
if [ -z "$master" ]; then
  master=$first_node
fi

conf="$CONF_DIR/redis.conf"
mkdir -p "$CONF_DIR" "$DATA_DIR"
{
  echo "port $REDIS_PORT"
  echo "bind $BIND_ADDRESS"
  echo "protected-mode no"
  echo "dir $DATA_DIR"
  echo "replica-announce-ip $MY_HOST"
  echo "replica-announce-port $REDIS_PORT"
  if [ -n "$REDIS_PASSWORD" ]; then
    echo "requirepass $REDIS_PASSWORD"
    echo "masterauth $REDIS_PASSWORD"
  fi
  if [ "$master" != "$MY_HOST" ]; then
    echo "replicaof $master $REDIS_PORT"
  fi
} > "$conf"

if [ "$master" = "$MY_HOST" ]; then
  echo "starting $MY_HOST as master"
else
  echo "starting $MY_HOST as replica of $master"
fi
exec "$REDIS_SERVER" "$conf"
