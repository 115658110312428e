#!/bin/sh
# Starts one Redis node of the bundled Sentinel topology, as master or as replica.
#
# Who is master is what the Sentinels say (by majority). When no Sentinel knows a master yet (a
# fresh install), a node that already reports itself master is, else the first node of
# REDIS_NODES (pod ordinal 0). Every other node replicates the master, so a node that restarts
# after a failover comes back as a replica of the new master, never as a second master.
#
# A node that the Sentinels still name as master while it starts has restarted faster than they
# noticed: it asks them to fail over to a replica and waits (bounded) for that, instead of coming
# back as an empty master that the replicas would then copy. If no replica can be promoted, it
# starts as master.
#
# Environment: see lib.sh, plus
#   DATA_DIR        Redis data directory (/data)      CONF_DIR      where redis.conf goes (/tmp)
#   BIND_ADDRESS    addresses to listen on (default all; tests give each node its own)
#   DOWN_AFTER_MS, FAILOVER_TIMEOUT_MS  as the Sentinels have them (bound the wait above)
#   REDIS_SERVER    redis-server binary (default redis-server)
set -eu
. "$(dirname "$0")/lib.sh"

: "${DATA_DIR:=/data}" "${CONF_DIR:=/tmp}" "${REDIS_SERVER:=redis-server}" "${BIND_ADDRESS:=* -::*}"
: "${DOWN_AFTER_MS:=5000}" "${FAILOVER_TIMEOUT_MS:=10000}"

master=$(sentinel_master)
if [ -n "$master" ]; then
  log "the Sentinels name $master as master"
  if [ "$master" = "$MY_HOST" ]; then
    # Wait no longer than the Sentinels would need to notice and finish a failover themselves.
    deadline=$(( $(now) + (DOWN_AFTER_MS + FAILOVER_TIMEOUT_MS) / 1000 + 2 ))
    requested=""
    while :; do
      if [ -z "$requested" ]; then
        # Ask once, of a Sentinel that still names this node (a second request would fail over
        # the new master again).
        for node in $REDIS_NODES; do
          named=$(cli -h "$node" -p "$SENTINEL_PORT" --raw SENTINEL get-master-addr-by-name "$MASTER_NAME" | head -n 1 || true)
          [ "$named" = "$MY_HOST" ] || continue
          requested=$(cli -h "$node" -p "$SENTINEL_PORT" SENTINEL failover "$MASTER_NAME" || true)
          [ -n "$requested" ] && break
        done
        case "$requested" in
          *NOGOODSLAVE*) log "no replica can be promoted: starting as master"; master=$MY_HOST; break ;;
          "") ;;
          *) log "asked the Sentinels to fail over: $requested" ;;
        esac
      fi
      master=$(sentinel_master)
      if [ -n "$master" ] && [ "$master" != "$MY_HOST" ]; then
        log "the Sentinels promoted $master"
        break
      fi
      if [ "$(now)" -ge "$deadline" ]; then
        log "no failover happened in time: starting as master"
        master=$MY_HOST
        break
      fi
      sleep 1
    done
  fi
else
  master=$(node_reporting_master "$MY_HOST")
  if [ -n "$master" ]; then
    log "no Sentinel knows a master; $master says it is one"
  else
    master=$first_node
    log "no Sentinel and no node knows a master: $first_node is the initial master"
  fi
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
    echo "requirepass \"$REDIS_PASSWORD\""
    echo "masterauth \"$REDIS_PASSWORD\""
  fi
  if [ "$master" != "$MY_HOST" ]; then
    echo "replicaof $master $REDIS_PORT"
  fi
} > "$conf"
chmod 600 "$conf"

if [ "$master" = "$MY_HOST" ]; then
  log "starting as master"
else
  log "starting as replica of $master"
fi
exec "$REDIS_SERVER" "$conf"
