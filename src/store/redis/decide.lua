-- Floodgate: check and count every descriptor of one request, atomically.
--
-- KEYS[i]   the key of check i (src/store/key.rs)
-- ARGV[1]   now in Unix milliseconds, or "" to use this Redis server's clock (TIME), so that
--           replicas with skewed clocks agree; tests pass their injected time here
-- ARGV[2]   "1" for a dry run: evaluate everything, write nothing (a Redis Cluster first asks
--           every slot whether it admits, then counts; see docs/redis.md)
-- ARGV      then 6 values per check i, at 2+6*(i-1)+1 .. 2+6*(i-1)+6:
--             algorithm   "f" fixed window, "s" sliding window, "t" token bucket (GCRA),
--                         "g" gate: over until the time KEYS[i] holds (a flag written by
--                         flag.lua, e.g. a blocked address)
--             limit       requests per window
--             window      window length in milliseconds
--             hits        hits to add (0 only looks)
--             shadow      "1" if this check may not deny the request
--             burst       bucket size (token bucket only)
-- Returns   { admitted (1|0), over_1 (1|0), remaining_1, reset_ms_1, ..., over_n, ... }
--           remaining_i counts this request's hits if they were recorded (admitted, not a dry
--           run), and not otherwise.
--
-- The rules are those of src/algorithm.rs, line by line:
--   f  state "start:count"              window start (ms) and count
--   s  state "start:count:previous"     plus the count of the window before
--   t  state "tat"                      theoretical arrival time (µs)
-- A request is admitted unless a non-shadow check would go over its limit; only then is any
-- state written (a denied request consumes nothing). Keys expire when their state no longer
-- matters (PX, relative to `now`, so that injected time and the server's clock agree). Lua numbers are doubles: exact up to 2^53, far above any count or µs time here.

-- Keys live a little past the moment their state stops mattering: state from an older window
-- reads as empty anyway, and the slack keeps a key from vanishing early when `now` is injected
-- (tests) or when Redis' expiry clock runs a hair ahead of TIME.
local EXPIRY_SLACK_MS = 1000

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function sat(x) if x < 0 then return 0 end return x end

-- Each returns over, remaining_after, remaining_before, reset_ms, next_state, expires_ms.
local function fixed(state, limit, window, hits)
  local start = now - (now % window)
  local count = 0
  if state then
    local s, c = string.match(state, '^(%d+):(%d+)$')
    if tonumber(s) == start then count = tonumber(c) end
  end
  local after = count + hits
  local over = after > limit
  local rem_after = 0
  if not over then rem_after = limit - after end
  return over, rem_after, sat(limit - count), start + window - now,
    string.format('%d:%d', start, after), start + window
end

local function sliding(state, limit, window, hits)
  local start = now - (now % window)
  local current, previous = 0, 0
  if state then
    local s, c, p = string.match(state, '^(%d+):(%d+):(%d+)$')
    s, c, p = tonumber(s), tonumber(c), tonumber(p)
    if s == start then current, previous = c, p
    elseif s and s + window == start then previous = c end
  end
  local weighted = math.floor(previous * (window - (now - start)) / window)
  local estimate = weighted + current
  local after = estimate + hits
  local over = after > limit
  local rem_after = 0
  if not over then rem_after = limit - after end
  return over, rem_after, sat(limit - estimate), start + window - now,
    string.format('%d:%d:%d', start, current + hits, previous), start + 2 * window
end

local function bucket(state, limit, window, hits, burst)
  local now_us = now * 1000
  if limit == 0 or burst == 0 then
    return hits > 0, 0, 0, window, string.format('%d', now_us), now
  end
  local interval = math.max(math.floor(window * 1000 / limit), 1)
  local tolerance = burst * interval
  local tat = now_us
  if state and tonumber(state) and tonumber(state) > now_us then tat = tonumber(state) end
  local new_tat = tat + hits * interval
  local over = new_tat - now_us > tolerance
  local function left(t) return math.floor(sat(tolerance - (t - now_us)) / interval) end
  local rem_after, reset = 0, math.ceil((new_tat - now_us - tolerance) / 1000)
  if not over then rem_after, reset = left(new_tat), math.ceil((new_tat - now_us) / 1000) end
  return over, rem_after, left(tat), reset, string.format('%d', new_tat), math.ceil(new_tat / 1000)
end

local n = #KEYS
local overs, after, before, resets, nexts, expires = {}, {}, {}, {}, {}, {}
local pending = {} -- key -> state written by an earlier check of this request
local admitted = 1
for i = 1, n do
  local b = 2 + 6 * (i - 1)
  local alg, limit, window = ARGV[b + 1], tonumber(ARGV[b + 2]), math.max(tonumber(ARGV[b + 3]), 1)
  local hits, shadow, burst = tonumber(ARGV[b + 4]), ARGV[b + 5] == '1', tonumber(ARGV[b + 6])
  if alg == 'g' then
    local untils = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
    overs[i], after[i], before[i], resets[i] = untils > now, 0, 0, sat(untils - now)
  else
    local state = pending[KEYS[i]]
    if state == nil then state = redis.call('GET', KEYS[i]) or nil end
    if alg == 's' then
      overs[i], after[i], before[i], resets[i], nexts[i], expires[i] = sliding(state, limit, window, hits)
    elseif alg == 't' then
      overs[i], after[i], before[i], resets[i], nexts[i], expires[i] = bucket(state, limit, window, hits, burst)
    else
      overs[i], after[i], before[i], resets[i], nexts[i], expires[i] = fixed(state, limit, window, hits)
    end
    pending[KEYS[i]] = nexts[i]
  end
  if overs[i] and not shadow then admitted = 0 end
end

local dry_run = ARGV[2] == '1'
local reply = { admitted }
for i = 1, n do
  local b = 2 + 6 * (i - 1)
  local remaining = before[i]
  -- A dry run records nothing, so it reports what is left without this request's hits.
  if admitted == 1 and not dry_run then
    remaining = after[i]
    if not dry_run and ARGV[b + 1] ~= 'g' and tonumber(ARGV[b + 4]) > 0 and expires[i] > now then
      -- the last check on a key carries its final state; writing each in turn ends there
      redis.call('SET', KEYS[i], nexts[i], 'PX', expires[i] - now + EXPIRY_SLACK_MS)
    end
  end
  local over = 0
  if overs[i] then over = 1 end
  reply[#reply + 1] = over
  reply[#reply + 1] = remaining
  reply[#reply + 1] = resets[i]
end
return reply
