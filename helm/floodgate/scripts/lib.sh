# Shared by redis-start.sh and sentinel-start.sh (POSIX sh, sourced; busybox is enough).
#
# Environment (set by the chart; tests set loopback values):
#   REDIS_NODES     space-separated host names of all Redis nodes, the initial master first
#   MY_HOST         this node's host name (one of REDIS_NODES)
#   REDIS_PORT      Redis port of every node (6379)      SENTINEL_PORT  Sentinel port (26379)
#   MASTER_NAME     the name the Sentinels monitor
#   REDIS_PASSWORD  optional: required by Redis (requirepass, masterauth) and by the Sentinels
#   CLI_TIMEOUT     seconds one redis-cli call may take (default 3)
#   REDIS_CLI       redis-cli binary (default redis-cli)

: "${REDIS_PORT:=6379}" "${SENTINEL_PORT:=26379}" "${REDIS_PASSWORD:=}" "${CLI_TIMEOUT:=3}"
: "${REDIS_CLI:=redis-cli}" "${MASTER_NAME:=floodgate}"

if [ -z "${REDIS_NODES:-}" ] || [ -z "${MY_HOST:-}" ]; then
  echo "REDIS_NODES and MY_HOST must be set" >&2
  exit 2
fi

first_node=$(echo "$REDIS_NODES" | awk '{print $1}')

log() { echo "[$(date -u +%H:%M:%S)] $MY_HOST: $*"; }

# redis-cli with a time limit, so an unreachable pod address cannot stall the bootstrap.
cli() {
  if command -v timeout >/dev/null 2>&1; then
    timeout "$CLI_TIMEOUT" "$REDIS_CLI" "$@" 2>/dev/null
  else
    "$REDIS_CLI" "$@" 2>/dev/null
  fi
}

# cli with the password (Redis and, in the bundled topology, the Sentinels require it), passed
# through the environment so that it does not show in the process list.
cli_auth() {
  if [ -n "$REDIS_PASSWORD" ]; then
    REDISCLI_AUTH="$REDIS_PASSWORD" cli "$@"
  else
    cli "$@"
  fi
}

# The master the Sentinels name, by majority of those answering ("" when none knows one).
# $1: a host whose Sentinel is not asked (optional).
sentinel_master() {
  for node in $REDIS_NODES; do
    [ "$node" = "${1:-}" ] && continue
    cli_auth -h "$node" -p "$SENTINEL_PORT" --raw SENTINEL get-master-addr-by-name "$MASTER_NAME" | head -n 1 || true
  done | grep -v '^$' | sort | uniq -c | sort -rn | awk 'NR == 1 {print $2}'
}

# The first node (other than $1) that says it is a master, for when no Sentinel answers
# but Redis still runs (every Sentinel restarted at once).
node_reporting_master() {
  for node in $REDIS_NODES; do
    [ "$node" = "${1:-}" ] && continue
    if cli_auth -h "$node" -p "$REDIS_PORT" INFO replication | grep -q '^role:master'; then
      echo "$node"
      return 0
    fi
  done
  return 0
}

# Seconds since the epoch (busybox date has %s).
now() { date +%s; }
