-- Floodgate: check and count every descriptor of one request, atomically; for each of
-- several requests in turn, so that one call serves a batch of concurrent requests (exactly as
-- if each had made its own call, one after the other).
--
-- KEYS      the keys of every check (src/store/key.rs), request after request
-- ARGV[1]   now in Unix milliseconds, or "" to use this Redis server's clock (TIME), so that
--           replicas with skewed clocks agree; tests pass their injected time here
-- ARGV[2]   "1" for a dry run: evaluate everything, write nothing (a Redis Cluster first asks
--           every slot whether it admits, then counts; see docs/redis.md)
-- ARGV      then per request: its number of checks n, then per check i (the check's key is
--           the request's i-th) four values, five for a token bucket:
--             algorithm   "f" fixed window, "s" sliding window, "t" token bucket (GCRA),
--                         "g" gate: over until the time KEYS[i] holds (a flag written by
--                         flag.lua, e.g. a blocked address); in capitals ("F", "S", "T",
--                         "G") for a shadow check, which may not deny the request; then,
--                         optionally, "q" for a quota (quotas deny only when every quota
--                         check of the request is over) and "c" for a check whose hits are
--                         counted even when the request is denied (e.g. "fc", "Tq")
--             limit       requests per window
--             window      window length in milliseconds
--             hits        hits to add (0 only looks)
--             burst       bucket size (token bucket only)
-- Returns   per request: admitted (1|0), then over_i (1|0), remaining_i, reset_ms_i per check,
--           all in one flat list. remaining_i counts the request's hits if they were recorded
--           (admitted or a "c" check, not a dry run), and not otherwise.
--
-- The rules are those of src/algorithm.rs, line by line:
--   f  a hash: field "start:" → count  the window's start (ms) and its count
--   s  state "start:count:previous"     window start, count, and the count of the window before
--   t  state "tat"                      theoretical arrival time (µs)
-- A request is admitted unless a non-shadow check would go over its limit (quotas: unless
-- every one would), and only an admitted request's hits stay counted, but for "c" checks (a
-- denied request consumes nothing else: sliding windows and buckets are written only once the
-- request is decided, fixed windows count as they go and are taken back). A bucket recorded
-- past its limit owes at most one window. Keys expire when their state no longer matters (relative to `now`, so that
-- injected time and the server's clock agree); a write within the window the key already holds
-- keeps its expiry (KEEPTTL, half the cost of PX). Lua numbers are doubles: exact up to 2^53,
-- far above any count or µs time here.
--
-- Redis runs this whole body on every call, so it is written for that: no local functions
-- (each would be a new closure per call), one table for what the second pass needs, states
-- parsed with plain find/sub (cheaper than patterns) and a window's start compared as the
-- string it is stored as, numbers converted only when they differ from the check before,
-- answers written straight into the reply.

-- Keys live a little past the moment their state stops mattering: state from an older window
-- reads as empty anyway, and the slack keeps a key from vanishing early when `now` is injected
-- (tests) or when Redis' expiry clock runs a hair ahead of TIME.
local EXPIRY_SLACK_MS = 1000

local now = tonumber(ARGV[1])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local find, sub, format, floor = string.find, string.sub, string.format, math.floor
local dry = ARGV[2] == '1'
-- Lua's tonumber (strtod) and number formatting cost thousands of instructions each, and the
-- checks of one call mostly repeat the same sizes, limits, windows and hits: the last argument
-- string seen in each place and its number are kept (strings are interned, so comparing them
-- is one pointer comparison), and the "start:" prefix of the last window length's window.
local n_s, n, limit_s, limit, window_s, window, hits_s, hits = nil, 0, nil, 0, nil, 0, nil, 0
local prefix_window, prefix = nil, nil
-- reply[r+1] = admitted of the request whose answers start at r; reply[r+3i-1 .. r+3i+1] =
-- over, remaining, reset of its check i. remaining starts as the count left without the
-- request's hits and becomes the count left with them once the request is admitted.
-- writes[5i-4 .. 5i] = remaining with the hits, next state (nil: nothing to write; also what a
-- later check of the request on the same key starts from), expiry (true: the key's expiry
-- stays as it is; false: a fixed window's hits, counted already in the field that next state
-- names, to take back if the request is denied), hits, and whether they count even then;
-- reused by every request. Both start sized for one check (they grow as needed).
local reply, writes = { 1, 0, 0, 0 }, { 0, false, 0, 0, false }
local r, a, k, nargs = 0, 3, 0, #ARGV
while a <= nargs do
  if ARGV[a] ~= n_s then n_s, n = ARGV[a], tonumber(ARGV[a]) end
  reply[r + 1] = 1
  local b, quotas, quotas_over = a + 1, 0, 0
  for i = 1, n do
    local alg, shadow, quota, counted = ARGV[b], false, false, false
    if alg ~= 'f' and alg ~= 's' and alg ~= 't' and alg ~= 'g' then
      local flags = alg
      alg = string.lower(sub(flags, 1, 1))
      shadow = alg ~= sub(flags, 1, 1)
      quota = find(flags, 'q', 2, true) ~= nil
      counted = find(flags, 'c', 2, true) ~= nil
    end
    local x = ARGV[b + 1]
    if x ~= limit_s then limit_s, limit = x, tonumber(x) end
    x = ARGV[b + 2]
    if x ~= window_s then
      window_s, window = x, tonumber(x)
      if window < 1 then window = 1 end
    end
    x = ARGV[b + 3]
    if x ~= hits_s then hits_s, hits = x, tonumber(x) end
    local key = KEYS[k + i]
    local over, after, before, reset, nxt, expires = false, 0, 0, 0, nil, 0
    if alg == 'g' then
      local untils = tonumber(redis.call('GET', key) or '0') or 0
      over = untils > now
      if over then reset = untils - now end
    else
      -- Several checks of a request may share a key: the last earlier one's next state is
      -- this one's (a scan: requests have few checks, and a table per request costs more). A
      -- fixed window keeps no pending state unless in a dry run: its hits are in Redis already.
      local state, stored = nil, true
      if alg ~= 'f' or dry then
        for j = i - 1, 1, -1 do
          if KEYS[k + j] == key and writes[5 * j - 3] then
            state, stored = writes[5 * j - 3], false
            break
          end
        end
      end
      if stored and alg ~= 'f' then state = redis.call('GET', key) end
      if alg == 't' then
        local now_us = now * 1000
        local burst = tonumber(ARGV[b + 4])
        if limit == 0 or burst == 0 then
          over, reset, nxt, expires = hits > 0, window, format('%d', now_us), now
        else
          local interval = floor(window * 1000 / limit)
          if interval < 1 then interval = 1 end
          local tolerance = burst * interval
          local tat = now_us
          local held = state and tonumber(state)
          if held and held > now_us then tat = held end
          local new_tat = tat + hits * interval
          over = new_tat - now_us > tolerance
          local left = tolerance - (tat - now_us)
          if left < 0 then left = 0 end
          before = floor(left / interval)
          if over then
            reset = math.ceil((new_tat - now_us - tolerance) / 1000)
          else
            left = tolerance - (new_tat - now_us)
            if left < 0 then left = 0 end
            after = floor(left / interval)
            reset = math.ceil((new_tat - now_us) / 1000)
          end
          local owed = now_us + tolerance + window * 1000
          if new_tat > owed then new_tat = owed end
          nxt, expires = format('%d', new_tat), math.ceil(new_tat / 1000)
        end
      else
        local start = now - (now % window)
        if window ~= prefix_window then prefix_window, prefix = window, format('%d:', start) end
        local estimate, total
        if alg == 'f' then
          -- A fixed window counts in a hash field named after the window's start: HINCRBY
          -- counts and reads back in one command (no state string to parse and format), and
          -- an admitted request's hits are counted here already (taken back if it is denied).
          if hits > 0 and not dry then
            -- hits_s: the argument as sent (Redis would format the number back into a string)
            total = redis.call('HINCRBY', key, prefix, hits_s)
            if total == hits then
              -- the window's first count: drop an older window's field, set the expiry
              if redis.call('HLEN', key) > 1 then
                redis.call('DEL', key)
                redis.call('HSET', key, prefix, total)
              end
              redis.call('PEXPIRE', key, start + window - now + EXPIRY_SLACK_MS)
            end
            nxt, expires = prefix, false
          else
            -- only looking, or a dry run (whose pending state is the count)
            total = (state or tonumber(redis.call('HGET', key, prefix) or '0')) + hits
            if dry then nxt = total end
          end
          estimate = total - hits
        else
          -- same: the state is this window's, so the key already expires when this window's
          -- state stops mattering (if it came from Redis; a pending state may not be written)
          local current, previous, same = 0, 0, false
          if state then
            local p = find(state, ':', 1, true)
            if p then
              local q = find(state, ':', p + 1, true)
              if sub(state, 1, p) == prefix then
                same = stored
                current = tonumber(sub(state, p + 1, q and q - 1))
                if q then previous = tonumber(sub(state, q + 1)) end
              elseif tonumber(sub(state, 1, p - 1)) == start - window then
                previous = tonumber(sub(state, p + 1, q and q - 1))
              end
            end
          end
          estimate = floor(previous * (window - (now - start)) / window) + current
          total = estimate + hits
          nxt = format('%s%d:%d', prefix, current + hits, previous)
          if same then expires = true else expires = start + 2 * window end
        end
        over = total > limit
        if not over then after = limit - total end
        if estimate < limit then before = limit - estimate end
        reset = start + window - now
      end
    end
    if alg == 't' then b = b + 5 else b = b + 4 end
    if over and not shadow then
      if quota then quotas_over = quotas_over + 1 else reply[r + 1] = 0 end
    end
    if quota then quotas = quotas + 1 end
    local o = r + 3 * i
    if over then reply[o - 1] = 1 else reply[o - 1] = 0 end
    reply[o], reply[o + 1] = before, reset
    local w = 5 * i
    writes[w - 4], writes[w - 3], writes[w - 2], writes[w - 1], writes[w] =
      after, nxt, expires, hits, counted
  end
  if quotas > 0 and quotas_over == quotas then reply[r + 1] = 0 end

  if not dry then
    local admitted = reply[r + 1] == 1
    for i = 1, n do
      local w = 5 * i
      local nxt, expires, hits = writes[w - 3], writes[w - 2], writes[w - 1]
      if admitted or writes[w] then
        reply[r + 3 * i] = writes[w - 4]
        -- the last check on a key carries its final state; writing each in turn ends there
        if expires ~= false and nxt and hits > 0 then
          if expires == true then
            redis.call('SET', KEYS[k + i], nxt, 'KEEPTTL')
          elseif expires > now then
            redis.call('SET', KEYS[k + i], nxt, 'PX', expires - now + EXPIRY_SLACK_MS)
          end
        end
      elseif expires == false then
        -- denied: take back the fixed window's count (a field back at zero goes, and with the
        -- last field the key, so a denied request leaves nothing behind)
        local key, field = KEYS[k + i], nxt
        if redis.call('HINCRBY', key, field, -hits) == 0 then
          redis.call('HDEL', key, field)
        end
      end
    end
  end
  r, a, k = r + 1 + 3 * n, b, k + n
end
return reply
