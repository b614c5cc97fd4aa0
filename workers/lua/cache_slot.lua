-- Counting semaphore with leases: at most ARGV[3] chunk loads of one warmer run at once.
--
-- KEYS[1]   slots                              jobs:cache:slots:<warmer>
--           sorted set, member: holder token, score: lease end (unix ms, server clock)
-- ARGV[1]   "acquire" | "release"
-- ARGV[2]   holder token
-- ARGV[3]   limit (acquire)
-- ARGV[4]   lease, ms (acquire): a holder that died frees its slot after this
-- Returns 1 (slot taken / released) or 0 (no free slot / not held). Expired leases are
-- dropped before counting.
if ARGV[1] == 'release' then
  return redis.call('ZREM', KEYS[1], ARGV[2])
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lease = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[2]) or redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], now + lease, ARGV[2])
  if redis.call('PTTL', KEYS[1]) < lease then redis.call('PEXPIRE', KEYS[1], lease) end
  return 1
end
return 0
