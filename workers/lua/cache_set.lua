-- Store loaded values unless a newer load already stored them (compare-and-set on version).
--
-- KEYS[i]     value hash of item i             jobs:cache:value:<key>
--             fields: v (version), d (JSON data), f (fresh until, unix ms, server clock)
-- ARGV[1]     version of this load, taken (INCR jobs:cache:version) before the load started
-- ARGV[2]     stale window, ms: the hash is kept this long after the TTL (0: gone at the TTL)
-- ARGV[1+2i]  JSON data of item i
-- ARGV[2+2i]  TTL of item i, ms
-- Returns the number of items written. An item whose stored version is >= ARGV[1] is left
-- alone: a load that started earlier never overwrites the value of a load that started later.
local version = tonumber(ARGV[1])
local stale = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local written = 0
for i, key in ipairs(KEYS) do
  local current = tonumber(redis.call('HGET', key, 'v') or '-1')
  if current < version then
    local ttl = tonumber(ARGV[2 + 2 * i])
    redis.call('HSET', key, 'v', ARGV[1], 'd', ARGV[1 + 2 * i], 'f', now + ttl)
    redis.call('PEXPIRE', key, ttl + stale)
    written = written + 1
  end
end
return written
