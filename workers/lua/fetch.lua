-- Reliable fetch: pop the next message and record it as in flight, atomically.
-- Closes stock kombu's BRPOP-then-record gap: a message is always in a queue list,
-- in exactly one consumer's in-flight hash, or acknowledged.
--
-- KEYS[1]      in-flight hash of this consumer   jobs:inflight:<consumer>  (tag -> "<src>\n<raw>")
-- KEYS[2]      consumer registry                 jobs:consumers            (zset, score = heartbeat)
-- KEYS[3]      paused queue names                jobs:queues:paused        (set; jobctl queues pause)
-- KEYS[4..n]   queue list keys, highest priority first (kombu layout: "<queue>" and "<queue>\x06\x16<pri>")
-- ARGV[1]      consumer id
-- ARGV[2]      now, unix seconds
-- ARGV[3..4]   drain counter (backpressure): the queue's stats key is ARGV[3] .. <queue> .. ARGV[4]
--              ("jobs:queue:" .. q .. ":stats"); its "fetched" field counts fetches (housekeeping
--              turns it into the drain rate behind QueueFull.retry_after; an envelope counts
--              its jobs and gives back its "enveloped" extra). That key is derived
--              here, not declared: like restore.lua, this needs a single Redis node.
-- ARGV[5]      kombu's priority separator "\x06\x16" (a list key's queue is the text before it)
-- ARGV[6]      most messages to take (the consumer's prefetch headroom; 1 when absent)
-- Returns {src, raw, delivery_tag, src, raw, delivery_tag, ...} (highest priority first, each
-- recorded as in flight), or false when every list is empty or paused.
-- A list whose queue is in KEYS[3] is skipped, whatever its priority: pausing is atomic with
-- the pop, so no consumer pops from a queue after the pause is written.
-- A body that is not a kombu envelope gets a synthetic "garbage:" tag so it can be dead-lettered.
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
local paused = nil
if redis.call('SCARD', KEYS[3]) > 0 then
  paused = {}
  for _, name in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    paused[name] = true
  end
end
local want = 3 * (tonumber(ARGV[6]) or 1)
local taken = {}
for i = 4, #KEYS do
  local sep = string.find(KEYS[i], ARGV[5], 1, true)
  local queue = sep and string.sub(KEYS[i], 1, sep - 1) or KEYS[i]
  if not (paused and paused[queue]) then
    local stats = ARGV[3] .. queue .. ARGV[4]
    while #taken < want do
      local raw = redis.call('RPOP', KEYS[i])
      if not raw then break end
      local tag
      local ok, msg = pcall(cjson.decode, raw)
      if ok and type(msg) == 'table' and type(msg.properties) == 'table'
          and type(msg.properties.delivery_tag) == 'string' then
        tag = msg.properties.delivery_tag
      else
        tag = 'garbage:' .. redis.sha1hex(raw) .. ':' .. ARGV[2] .. ':' .. #taken
      end
      redis.call('HSET', KEYS[1], tag, KEYS[i] .. '\n' .. raw)
      -- An envelope counts its jobs (workers/envelopes.py): drain rate and depth are in jobs.
      local n = 1
      if ok and type(msg) == 'table' and type(msg.headers) == 'table' then
        n = tonumber(msg.headers.jobs_count) or 1
      end
      redis.call('HINCRBY', stats, 'fetched', n)
      if n > 1 then redis.call('HINCRBY', stats, 'enveloped', 1 - n) end
      taken[#taken + 1] = KEYS[i]
      taken[#taken + 1] = raw
      taken[#taken + 1] = tag
    end
    if #taken >= want then break end
  end
end
if #taken == 0 then return false end
return taken
