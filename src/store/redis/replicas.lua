-- Floodgate: a replica's heartbeat for the local fallback, and the count of live replicas.
--
-- KEYS[1]   the sorted set of replicas (member: a replica's id; score: its last heartbeat)
-- ARGV[1]   this replica's id
-- ARGV[2]   how long a heartbeat counts, in milliseconds
-- ARGV[3]   now in Unix milliseconds, or "" for this Redis server's clock (as in decide.lua)
-- Returns   the number of replicas heard from within ARGV[2], this one included
--
-- The set is one key (one Cluster slot); members older than ARGV[2] are dropped on every
-- call and the key expires when no replica calls, so nothing is left behind.

local now = tonumber(ARGV[3])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local ttl = math.max(tonumber(ARGV[2]), 1)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
return redis.call('ZCARD', KEYS[1])
