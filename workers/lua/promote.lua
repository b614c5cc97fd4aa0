-- Move due messages from the delayed store to the back of their queue, atomically and exactly
-- once even with several promoters running (each member is removed in the same script).
--
-- KEYS[1]   delayed store                      jobs:delayed (member "<src>\n<raw>")
-- ARGV[1]   now, unix seconds
-- ARGV[2]   batch size
-- ARGV[3]   wake-key prefix                    "jobs:wake:"
-- ARGV[4]   kombu priority separator           "\x06\x16"
-- Returns the number promoted.
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[2]))
local woken = {}
for _, value in ipairs(due) do
  local nl = string.find(value, '\n', 1, true)
  local src = string.sub(value, 1, nl - 1)
  redis.call('LPUSH', src, string.sub(value, nl + 1))
  local sep = string.find(src, ARGV[4], 1, true)
  woken[sep and string.sub(src, 1, sep - 1) or src] = true
end
if #due > 0 then redis.call('ZREM', KEYS[1], unpack(due)) end
for base, _ in pairs(woken) do
  redis.call('LPUSH', ARGV[3] .. base, '1')
  redis.call('LTRIM', ARGV[3] .. base, 0, 63)
end
return #due
