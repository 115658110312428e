-- Floodgate: set a flag that gate checks of decide.lua read (e.g. a blocked address).
--
-- KEYS[1]   the flag's key
-- ARGV[1]   now in Unix milliseconds, or "" for this Redis server's clock (as in decide.lua)
-- ARGV[2]   how long the flag stays set, in milliseconds
-- Returns   the time (Unix ms) until which the flag is set
--
-- The flag holds its end time, so gates compare it with the same `now` as the counters; its
-- key expires a second after that end, so nothing is left behind. The second is decide.lua's
-- slack for counters: an injected `now` (tests), or Redis' expiry clock a hair ahead of TIME,
-- must not make the flag vanish before the end it holds.

local EXPIRY_SLACK_MS = 1000

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local ttl = math.max(tonumber(ARGV[2]), 1)
redis.call('SET', KEYS[1], string.format('%d', now + ttl), 'PX', ttl + EXPIRY_SLACK_MS)
return now + ttl
