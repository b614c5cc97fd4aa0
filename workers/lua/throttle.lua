-- Adaptive back-off of one rate limit after the downstream said 429 (multiplicative decrease),
-- plus a block until its Retry-After has passed. Recovery (additive increase) is computed
-- lazily by ratelimit.lua from the time since the block ended.
--
-- KEYS[1]   limiter state            jobs:rate:<name>  (hash; layout in ratelimit.lua)
-- ARGV[1]   decrease: the current factor is multiplied by this (e.g. 0.5)
-- ARGV[2]   retry after, milliseconds ("0" = decrease only, no block)
-- ARGV[3]   recovery: fraction of the rate regained per quiet second
-- ARGV[4]   floor of the factor (the limit never drops below rate * floor)
-- Every reservation is dropped: parked jobs come back at their old slots, find none, and are
-- parked again behind the block at the slower pace (no burst when the block ends).
-- Returns {factor as a string, blocked until in ms}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000

local state = redis.call('HMGET', KEYS[1], 'f', 'dt', 'bu', 'cfg')
local f = tonumber(state[1]) or 1
local dt = tonumber(state[2]) or 0
local bu = tonumber(state[3]) or 0
local rec = tonumber(ARGV[3])
local factor = 1
if f < 1 then factor = math.min(1, f + rec * math.max(0, now - math.max(dt, bu)) / 1000) end

factor = math.max(factor * tonumber(ARGV[1]), tonumber(ARGV[4]))
bu = math.max(bu, now + tonumber(ARGV[2]))

redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'f', factor, 'dt', now, 'bu', bu)
if state[4] then redis.call('HSET', KEYS[1], 'cfg', state[4]) end
redis.call('PEXPIRE', KEYS[1], math.ceil(bu - now + (1 - factor) / rec * 1000 + 60000))
return { tostring(factor), math.floor(bu) }
