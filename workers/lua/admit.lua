-- Admission of one job: backpressure, enqueue-time dedup and publish in one atomic step (one
-- round trip), so a producer that dies midway can neither lose the job nor leave a dedup marker
-- without a job, and a refused job leaves no trace at all.
--
-- 1. Backpressure. depth = sum of LLEN over the queue's priority sub-queues (KEYS[5..]).
--    While the full marker exists, refuse unless depth < low watermark (then clear it);
--    otherwise refuse when depth >= high watermark and set the marker (hysteresis). With a max
--    age, also refuse while the oldest waiting job (LINDEX -1 of each sub-queue, i.e. the next
--    one fetched) became ready more than max age ago ("ready_at" in its "jobs" header; entries
--    without it are ignored). Applies to delayed jobs too: they land on the same queue.
-- 2. Dedup: a key already held returns the holder's job id; nothing is published.
-- 3. Publish: LPUSH onto the queue (plus a wake token), or ZADD into the delayed store.
--
-- KEYS[1]     dedup marker          jobs:dedup:<idempotency key> (value: job id)
-- KEYS[2]     destination: the queue list key, or jobs:delayed when due later
-- KEYS[3]     full marker           jobs:queue:<queue>:full  (set while refusing; TTL ARGV[11])
-- KEYS[4]     stats hash            jobs:queue:<queue>:stats (drain_rate, sampled_at: housekeeping)
-- KEYS[5..n]  the queue's list keys, one per priority step: "<queue>", "<queue>\x06\x163", ...
-- ARGV[1]     job id
-- ARGV[2]     dedup window, milliseconds
-- ARGV[3]     message (kombu JSON envelope)
-- ARGV[4]     due time, unix seconds; "0" = now
-- ARGV[5]     queue list key (the promoter's target when delayed)
-- ARGV[6]     wake key of the queue
-- ARGV[7]     high watermark (jobs)
-- ARGV[8]     low watermark (jobs)
-- ARGV[9]     max age of the oldest waiting job, seconds; "0" = no age limit
-- ARGV[10]    now, unix seconds (compared with "ready_at", which producers stamp)
-- ARGV[11]    full-marker TTL, seconds (refreshed on every refusal)
-- ARGV[12]    optional: counters hash          jobs:counters (HINCRBY ARGV[13] on a refusal)
-- ARGV[13]    optional: counter field          "backpressure_rejected:<queue>"
--             (a key passed as ARGV, like fetch.lua's drain counter: a single Redis node only)
-- Returns false when published; the id of the job already holding the key when deduplicated;
-- when refused {reason ("full" | "age"), depth, drain_rate|nil, sampled_at|nil, age|nil}.
local depth = 0
for i = 5, #KEYS do depth = depth + redis.call('LLEN', KEYS[i]) end

local reason = nil
local age = false
if redis.call('EXISTS', KEYS[3]) == 1 then
  if depth >= tonumber(ARGV[8]) then reason = 'full' else redis.call('DEL', KEYS[3]) end
end
if not reason and depth >= tonumber(ARGV[7]) then reason = 'full' end
if not reason and ARGV[9] ~= '0' and depth > 0 then
  local oldest = nil
  for i = 5, #KEYS do
    local raw = redis.call('LINDEX', KEYS[i], -1)
    if raw then
      local at = tonumber(string.match(raw, '"ready_at": ([%d%.eE+-]+)'))
      if at and (oldest == nil or at < oldest) then oldest = at end
    end
  end
  if oldest and tonumber(ARGV[10]) - oldest > tonumber(ARGV[9]) then
    reason = 'age'
    age = tostring(tonumber(ARGV[10]) - oldest)
  end
end
if reason then
  if reason == 'full' then redis.call('SET', KEYS[3], depth, 'EX', ARGV[11]) end
  if ARGV[13] then redis.call('HINCRBY', ARGV[12], ARGV[13], 1) end
  local stats = redis.call('HMGET', KEYS[4], 'drain_rate', 'sampled_at')
  return {reason, depth, stats[1], stats[2], age}
end

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
