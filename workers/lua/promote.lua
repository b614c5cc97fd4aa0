-- Move due messages from the delayed store to the back of their queue, atomically and exactly
-- once even with several promoters running (each member is removed in the same script).
--
-- KEYS[1]   delayed store                      jobs:delayed (member "<src>\n<raw>")
-- ARGV[1]   now, unix seconds
-- ARGV[2]   batch size
-- ARGV[3]   wake-key prefix                    "jobs:wake:"
-- ARGV[4]   kombu priority separator           "\x06\x16"
-- ARGV[5..6] stats hash of a queue: ARGV[5] .. <queue> .. ARGV[6] (an envelope adds its extra
--           jobs to its "enveloped" field)
-- Returns the number promoted.
-- Jobs beyond one in an envelope message (workers/envelopes.py), 0 for a single job.
local function extra_jobs(raw)
  return (tonumber(string.match(raw, '"jobs_count": "(%d+)"') or '1')) - 1
end
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
local woken = {}
for _, value in ipairs(due) do
  local nl = string.find(value, '\n', 1, true)
  local src = string.sub(value, 1, nl - 1)
  local raw = string.sub(value, nl + 1)
  redis.call('LPUSH', src, raw)
  local sep = string.find(src, ARGV[4], 1, true)
  local base = sep and string.sub(src, 1, sep - 1) or src
  woken[base] = true
  local extra = extra_jobs(raw)
  if extra > 0 then redis.call('HINCRBY', ARGV[5] .. base .. ARGV[6], 'enveloped', extra) end
end
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
for base, _ in pairs(woken) do
  redis.call('LPUSH', ARGV[3] .. base, '1')
  redis.call('LTRIM', ARGV[3] .. base, 0, 63)
end
return #due
