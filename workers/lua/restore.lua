-- Put in-flight messages back at the front of their queue (reject+requeue, warm shutdown,
-- or recovery of a consumer whose heartbeat stopped).
--
-- KEYS[1]   in-flight hash of the consumer     jobs:inflight:<consumer>
-- KEYS[2]   consumer registry                  jobs:consumers
-- ARGV[1]   consumer id
-- ARGV[2]   delivery tag to restore, or "" for all of them (then the consumer is unregistered)
-- ARGV[3]   wake-key prefix                    "jobs:wake:"
-- ARGV[4]   kombu priority separator           "\x06\x16"
-- ARGV[5]   recovery only: restore all only if the consumer's heartbeat is older than this
--           (unix seconds), re-checked here so a consumer that just beat again is left alone
-- ARGV[6..7] stats hash of a queue: ARGV[6] .. <queue> .. ARGV[7] (an envelope adds its extra
--           jobs back to its "enveloped" field)
-- Returns the number of messages restored. Queue and wake keys are derived from the stored
-- source key, so this script needs a single Redis node (not Redis Cluster).
-- Jobs beyond one in an envelope message (workers/envelopes.py), 0 for a single job.
local function extra_jobs(raw)
  return (tonumber(string.match(raw, '"jobs_count": "(%d+)"') or '1')) - 1
end

local function restore(tag, value)
  local nl = string.find(value, '\n', 1, true)
  local src = string.sub(value, 1, nl - 1)
  local raw = string.sub(value, nl + 1)
  redis.call('RPUSH', src, raw)
  local sep = string.find(src, ARGV[4], 1, true)
  local base = sep and string.sub(src, 1, sep - 1) or src
  local extra = extra_jobs(raw)
  if extra > 0 then redis.call('HINCRBY', ARGV[6] .. base .. ARGV[7], 'enveloped', extra) end
  redis.call('LPUSH', ARGV[3] .. base, '1')
  redis.call('LTRIM', ARGV[3] .. base, 0, 63)
  redis.call('HDEL', KEYS[1], tag)
end

if ARGV[2] ~= '' then
  local value = redis.call('HGET', KEYS[1], ARGV[2])
  if not value then return 0 end
  restore(ARGV[2], value)
  return 1
end
if ARGV[5] and ARGV[5] ~= '' then
  local beat = redis.call('ZSCORE', KEYS[2], ARGV[1])
  if beat and tonumber(beat) >= tonumber(ARGV[5]) then return 0 end
end
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do restore(all[i], all[i + 1]) end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return #all / 2
