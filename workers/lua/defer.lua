-- Move an in-flight message to the delayed store (due later), atomically: used when a message
-- must come back later without being acknowledged now (e.g. its dead letter could not be written).
--
-- KEYS[1]   in-flight hash of the consumer     jobs:inflight:<consumer>
-- KEYS[2]   delayed store                      jobs:delayed (zset, score = due time, member "<src>\n<raw>")
-- ARGV[1]   delivery tag
-- ARGV[2]   due time, unix seconds
-- Returns 1 when moved, 0 when the tag was not in flight.
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], value)
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
