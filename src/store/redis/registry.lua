-- Floodgate: users and API keys of one domain, changed atomically.
--
-- KEYS[1]   <prefix>users (declared so that a Redis Cluster routes the call to the registry's
--           slot; every other key shares its hash tag)
-- ARGV[1]   the operation (below)
-- ARGV[2]   the domain's registry prefix (see src/store/key.rs: registry_prefix); every key
--           used here starts with it, and its hash tag keeps them in one Cluster slot
-- Keys      <prefix>k|<api key>   string: the key's user id
--           <prefix>u|<user id>   hash: tier
--           <prefix>s|<user id>   set: the user's API keys
--           <prefix>users         sorted set (all scores 0): user ids, for paging by id
--
-- Operations (further ARGV) and replies:
--   identity  key                  -> { user, tier } or {}
--   user      user                 -> { tier, key... } or {}
--   users     after, limit         -> { { user, tier, key... }, ... } (ids after `after`)
--   create    user, tier, key...   -> "OK" | "EXISTS" | "TAKEN <index of the key, from 1>"
--   add_key   user, key            -> "OK" | "NO_USER" | "TAKEN 1"
--   revoke    user, key            -> "OK" | "NO_USER" | "NO_KEY"
--   tier      user, tier           -> "OK" | "NO_USER"

local op, base = ARGV[1], ARGV[2]
local function key_of(k) return base .. 'k|' .. k end
local function user_of(u) return base .. 'u|' .. u end
local function keys_of(u) return base .. 's|' .. u end
local users = base .. 'users'

local function describe(u)
  local tier = redis.call('HGET', user_of(u), 'tier')
  if not tier then return nil end
  local keys = redis.call('SMEMBERS', keys_of(u))
  table.sort(keys)
  local reply = { tier }
  for _, k in ipairs(keys) do reply[#reply + 1] = k end
  return reply
end

if op == 'identity' then
  local u = redis.call('GET', key_of(ARGV[3]))
  if not u then return {} end
  local tier = redis.call('HGET', user_of(u), 'tier')
  if not tier then return {} end
  return { u, tier }
elseif op == 'user' then
  return describe(ARGV[3]) or {}
elseif op == 'users' then
  local start = '-'
  if ARGV[3] ~= '' then start = '(' .. ARGV[3] end
  local ids = redis.call('ZRANGEBYLEX', users, start, '+', 'LIMIT', 0, tonumber(ARGV[4]))
  local reply = {}
  for _, u in ipairs(ids) do
    local d = describe(u)
    if d then
      table.insert(d, 1, u)
      reply[#reply + 1] = d
    end
  end
  return reply
elseif op == 'create' then
  local u = ARGV[3]
  if redis.call('EXISTS', user_of(u)) == 1 then return 'EXISTS' end
  for i = 5, #ARGV do
    if redis.call('EXISTS', key_of(ARGV[i])) == 1 then return 'TAKEN ' .. (i - 4) end
  end
  redis.call('HSET', user_of(u), 'tier', ARGV[4])
  redis.call('ZADD', users, 0, u)
  for i = 5, #ARGV do
    redis.call('SET', key_of(ARGV[i]), u)
    redis.call('SADD', keys_of(u), ARGV[i])
  end
  return 'OK'
elseif op == 'add_key' then
  local u, k = ARGV[3], ARGV[4]
  if redis.call('EXISTS', user_of(u)) == 0 then return 'NO_USER' end
  if redis.call('EXISTS', key_of(k)) == 1 then return 'TAKEN 1' end
  redis.call('SET', key_of(k), u)
  redis.call('SADD', keys_of(u), k)
  return 'OK'
elseif op == 'revoke' then
  local u, k = ARGV[3], ARGV[4]
  if redis.call('EXISTS', user_of(u)) == 0 then return 'NO_USER' end
  if redis.call('SREM', keys_of(u), k) == 0 then return 'NO_KEY' end
  redis.call('DEL', key_of(k))
  return 'OK'
elseif op == 'tier' then
  local u = ARGV[3]
  if redis.call('EXISTS', user_of(u)) == 0 then return 'NO_USER' end
  redis.call('HSET', user_of(u), 'tier', ARGV[4])
  return 'OK'
end
return redis.error_reply('unknown registry operation ' .. tostring(op))
