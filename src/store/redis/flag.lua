-- Floodgate: set a flag that gate checks of decide.lua read (e.g. a blocked address).
--
-- KEYS[1]   the flag's key
-- ARGV[1]   now in Unix milliseconds, or "" for this Redis server's clock (as in decide.lua)
-- ARGV[2]   how long the flag stays set, in milliseconds
-- Returns   the time (Unix ms) until which the flag is set
--
-- The flag holds its end time, so gates compare it with the same `now` as the counters; it
-- also expires then, so nothing is left behind.

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local ttl = math.max(tonumber(ARGV[2]), 1)
redis.call('SET', KEYS[1], string.format('%d', now + ttl), 'PX', ttl)
return now + ttl
