#!/bin/sh
# Starts one Redis node of the bundled Sentinel topology, as master or as replica.
#
# Who is master is what the Sentinels say (by majority). When no Sentinel knows a master yet (a
# fresh install), a node that already reports itself master is, else the first node of
# REDIS_NODES (pod ordinal 0). Every other node replicates the master, so a node that restarts
# after a failover comes back as a replica of the new master, never as a second master.
#
# A node that the Sentinels still name as master while it starts has restarted faster than they
# noticed: it waits (bounded) for them to promote a replica, instead of coming back as an empty
# master that the replicas would then copy. If no replica gets promoted in time, it starts as
# master.
#
# Environment: see lib.sh, plus
#   DATA_DIR        Redis data directory (/data)      CONF_DIR      where redis.conf goes (/tmp)
#   BIND_ADDRESS    addresses to listen on (default all; tests give each node its own)
#   DOWN_AFTER_MS, FAILOVER_TIMEOUT_MS  as the Sentinels have them (bound the wait above)
#   MAXMEMORY       Redis maxmemory (e.g. 400mb; empty: no limit)
#   MAXMEMORY_POLICY  eviction policy (default volatile-ttl)
#   PERSISTENCE     yes: keep RDB snapshots in DATA_DIR (default); no: keep nothing on disk
#   REDIS_SERVER    redis-server binary (default redis-server)
set -eu
. "$(dirname "$0")/lib.sh"

: "${DATA_DIR:=/data}" "${CONF_DIR:=/tmp}" "${REDIS_SERVER:=redis-server}" "${BIND_ADDRESS:=* -::*}"
: "${DOWN_AFTER_MS:=5000}" "${FAILOVER_TIMEOUT_MS:=10000}"
: "${MAXMEMORY:=}" "${MAXMEMORY_POLICY:=volatile-ttl}" "${PERSISTENCE:=yes}"

master=$(sentinel_master)
if [ -n "$master" ]; then
  log "the Sentinels name $master as master"
  if [ "$master" = "$MY_HOST" ]; then
    # Redis is not running here, so the Sentinels see their master down and, after
    # DOWN_AFTER_MS, elect a leader that promotes a replica. Wait for that (not longer than
    # they would need), rather than force a failover: a forced one can race theirs and promote
    # twice.
    deadline=$(( $(now) + (DOWN_AFTER_MS + FAILOVER_TIMEOUT_MS) / 1000 + 2 ))
    log "waiting for the Sentinels to promote a replica"
    while :; do
      master=$(sentinel_master)
      if [ -n "$master" ] && [ "$master" != "$MY_HOST" ]; then
        log "the Sentinels promoted $master"
        break
      fi
      if [ "$(now)" -ge "$deadline" ]; then
        log "no failover happened in time (no replica to promote?): starting as master"
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
  # Counters all expire: under memory pressure, drop those closest to expiring rather than
  # refuse writes (or be killed at the container's memory limit).
  [ -z "$MAXMEMORY" ] || echo "maxmemory $MAXMEMORY"
  echo "maxmemory-policy $MAXMEMORY_POLICY"
  if [ "$PERSISTENCE" != yes ]; then
    # Nothing to keep: no snapshots (and their fork); replicas sync without disk.
    echo 'save ""'
    echo "appendonly no"
  fi
  echo "repl-diskless-sync yes"
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
