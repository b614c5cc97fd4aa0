-- Admission of one job: enqueue-time dedup and publish in one atomic step, so a producer that
-- dies between the two can neither lose the job nor leave a dedup marker without a job.
--
-- KEYS[1]   dedup marker                       jobs:dedup:<idempotency key> (value: job id)
-- KEYS[2]   destination: the queue list key, or jobs:delayed when due later
-- ARGV[1]   job id
-- ARGV[2]   dedup window, milliseconds
-- ARGV[3]   message (kombu JSON envelope)
-- ARGV[4]   due time, unix seconds; "0" = now
-- ARGV[5]   queue list key (the promoter's target when delayed)
-- ARGV[6]   wake key of the queue
-- Returns false when published, or the id of the job already holding the key.
local existing = redis.call('GET', KEYS[1])
if existing then return existing end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if ARGV[4] == '0' then
  redis.call('LPUSH', KEYS[2], ARGV[3])
  redis.call('LPUSH', ARGV[6], '1')
  redis.call('LTRIM', ARGV[6], 0, 63)
else
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5] .. '\n' .. ARGV[3])
end
return false
