-- Read one cached value and whether it is still fresh (by the Redis server's clock, so hosts
-- with skewed clocks agree).
--
-- KEYS[1]   value hash                         jobs:cache:value:<key>
--           fields: v (version), d (JSON data), f (fresh until, unix ms)
-- Returns {"miss"} | {"fresh", version, data} | {"stale", version, data}. A stale value is
-- past its TTL but still kept: its stale-while-revalidate window (the hash's expiry).
local entry = redis.call('HMGET', KEYS[1], 'v', 'd', 'f')
if not entry[2] then return {'miss'} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = 'stale'
if tonumber(entry[3] or '0') > now then state = 'fresh' end
return {state, entry[1] or '0', entry[2]}
