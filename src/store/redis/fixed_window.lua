-- Floodgate: check and count every descriptor of one request, atomically (fixed windows).
--
-- KEYS[i]   counter key of check i (see src/store/key.rs)
-- ARGV      5 values per check i, at 5*(i-1)+1 .. 5*(i-1)+5:
--             limit        requests allowed per window
--             window       window length in seconds
--             hits         hits to add (0 only reads)
--             shadow       "1" if this check may not deny the request
--             gate         "1" if KEYS[i] is a flag (e.g. a blocked address): it counts 1 while
--                          it exists, its reset is its remaining life, and it is never written
-- Returns   { admitted (1|0), count_1, reset_ms_1, ..., count_n, reset_ms_n }
--           count_i includes this request's hits, recorded or not.
--
-- A counter is stored as "<window start>:<count>" and expires when its window ends; a value
-- from an older window reads as 0, so window edges are exact to the millisecond whatever the
-- expiry precision. Time comes from this Redis server's clock, so replicas with skewed clocks
-- agree. The request is admitted unless a non-shadow check would go over its limit; only then
-- are the hits written (a denied request consumes nothing).

local time = redis.call('TIME')
local now_s = tonumber(time[1])
local now_ms = now_s * 1000 + math.floor(tonumber(time[2]) / 1000)

local n = #KEYS
local counts, starts, resets = {}, {}, {}
local pending = {} -- key -> count after the earlier checks on it in this request
local admitted = 1
for i = 1, n do
  local base = 5 * (i - 1)
  local limit = tonumber(ARGV[base + 1])
  local shadow = ARGV[base + 4] == '1'
  local after
  if ARGV[base + 5] == '1' then
    local ttl = redis.call('PTTL', KEYS[i])
    after = 0
    resets[i] = 0
    if ttl > 0 then
      after = 1
      resets[i] = ttl
    end
  else
    local window = tonumber(ARGV[base + 2])
    local start = now_s - (now_s % window)
    local current = pending[KEYS[i]]
    if current == nil then
      current = 0
      local stored = redis.call('GET', KEYS[i])
      if stored then
        local stored_start, stored_count = string.match(stored, '^(%d+):(%d+)$')
        if tonumber(stored_start) == start then
          current = tonumber(stored_count)
        end
      end
    end
    after = current + tonumber(ARGV[base + 3])
    pending[KEYS[i]] = after
    starts[i] = start
    resets[i] = (start + window) * 1000 - now_ms
  end
  counts[i] = after
  if not shadow and after > limit then
    admitted = 0
  end
end

local reply = { admitted }
for i = 1, n do
  local base = 5 * (i - 1)
  if admitted == 1 and ARGV[base + 5] ~= '1' and tonumber(ARGV[base + 3]) > 0 then
    -- The last check on a key carries its final count; writing each in turn ends there.
    local ends = now_ms + resets[i]
    redis.call('SET', KEYS[i], string.format('%d:%d', starts[i], counts[i]), 'PXAT', ends)
  end
  reply[2 * i] = counts[i]
  reply[2 * i + 1] = resets[i]
end
return reply
