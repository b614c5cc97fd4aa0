-- Admission of jobs for ONE queue (and priority): backpressure, enqueue-time dedup and publish
-- in one atomic step per call, so a producer that dies midway can neither lose a job nor leave
-- a dedup marker without a job, and a refused job leaves no trace at all. A call carries one
-- job (enqueue) or a chunk of a batch (enqueue_many); each job is decided in order, as if the
-- script had run for it alone right after the previous one.
--
-- 1. Backpressure. depth = sum of LLEN over the queue's priority sub-queues (KEYS[4..]), plus
--    one per job this call published onto the queue. While the full marker exists, refuse
--    unless depth < low watermark (then clear it); otherwise refuse when depth >= high
--    watermark and set the marker (hysteresis). With a max age, also refuse while the oldest
--    waiting job (LINDEX -1 of each sub-queue, i.e. the next one fetched) became ready more
--    than max age ago ("ready_at" in its "jobs" header; entries without it are ignored); jobs
--    published by this call are the newest, so the oldest is read once. Applies to delayed
--    jobs too: they land on the same queue.
-- 2. Dedup: a key already held returns the holder's job id; nothing is published.
-- 3. Publish: LPUSH onto the queue (plus a wake token), or ZADD into the delayed store.
--
-- KEYS[1]     destination: the queue list key, or jobs:delayed when due later
-- KEYS[2]     full marker           jobs:queue:<queue>:full  (set while refusing; TTL ARGV[9])
-- KEYS[3]     stats hash            jobs:queue:<queue>:stats (drain_rate, sampled_at: housekeeping)
-- KEYS[4..n]  the queue's list keys, one per priority step: "<queue>", "<queue>\x06\x163", ...
-- ARGV[1]     dedup window, milliseconds
-- ARGV[2]     due time, unix seconds; "0" = now
-- ARGV[3]     queue list key (the promoter's target when delayed)
-- ARGV[4]     wake key of the queue
-- ARGV[5]     high watermark (jobs)             ARGV[6]  low watermark (jobs)
-- ARGV[7]     max age of the oldest waiting job, seconds; "0" = no age limit
-- ARGV[8]     now, unix seconds (compared with "ready_at", which producers stamp)
-- ARGV[9]     full-marker TTL, seconds (refreshed on every refusal)
-- ARGV[10]    counters hash jobs:counters      ARGV[11] field "backpressure_rejected:<queue>"
-- ARGV[12]    "m": each job is its own message; "e": the admitted jobs form ONE envelope
--             (workers/envelopes.py), whose message is ARGV[13] .. jobs .. ARGV[14] .. n ..
--             ARGV[15] .. n .. ARGV[16] (jobs = the admitted fragments joined by ",")
-- then        per job, three each: dedup marker key jobs:dedup:<idempotency key>, job id,
--             message (kombu JSON envelope) or, with "e", the job's escaped fragment
--             (keys passed as ARGV, like fetch.lua's drain counter: a single Redis node only)
-- Depth counts jobs, not messages: a waiting envelope of n jobs counts n (the stats hash's
-- "enveloped" field holds the n - 1 extra per waiting envelope).
-- Returns one entry per job, in order: false when published, the id of the job already holding
-- the key when deduplicated, {reason ("full" | "age"), depth, drain_rate|nil, sampled_at|nil,
-- age|nil} when refused.
local depth = 0
for i = 4, #KEYS do depth = depth + redis.call('LLEN', KEYS[i]) end
local enveloped = tonumber(redis.call('HGET', KEYS[3], 'enveloped') or '0')
if depth == 0 and enveloped ~= 0 then
  redis.call('HDEL', KEYS[3], 'enveloped')  -- the lists were purged behind our back
elseif depth > 0 then
  depth = depth + enveloped
end
local envelope = ARGV[12] == 'e'
local first = envelope and 17 or 13
local fragments = {}
local delayed = ARGV[2] ~= '0'
local high, low = tonumber(ARGV[5]), tonumber(ARGV[6])
local now = tonumber(ARGV[8])

-- The oldest waiting job cannot change within the call: jobs published here are the newest.
local too_old = false
if ARGV[7] ~= '0' and depth > 0 then
  local oldest = nil
  for i = 4, #KEYS do
    local raw = redis.call('LINDEX', KEYS[i], -1)
    if raw then
      local at = tonumber(string.match(raw, '"ready_at": ([%d%.eE+-]+)'))
      if at and (oldest == nil or at < oldest) then oldest = at end
    end
  end
  if oldest and now - oldest > tonumber(ARGV[7]) then too_old = tostring(now - oldest) end
end

local stats = nil
local replies = {}
local pushed = 0
for j = first, #ARGV, 3 do
  local reason = nil
  if redis.call('EXISTS', KEYS[2]) == 1 then
    if depth >= low then reason = 'full' else redis.call('DEL', KEYS[2]) end
  end
  if not reason and depth >= high then reason = 'full' end
  if not reason and too_old then reason = 'age' end
  if reason then
    if reason == 'full' then redis.call('SET', KEYS[2], depth, 'EX', ARGV[9]) end
    redis.call('HINCRBY', ARGV[10], ARGV[11], 1)
    stats = stats or redis.call('HMGET', KEYS[3], 'drain_rate', 'sampled_at')
    replies[#replies + 1] = {reason, depth, stats[1], stats[2], reason == 'age' and too_old}
  else
    local existing = redis.call('GET', ARGV[j])
    if existing then
      replies[#replies + 1] = existing
    else
      redis.call('SET', ARGV[j], ARGV[j + 1], 'PX', ARGV[1])
      if envelope then
        fragments[#fragments + 1] = ARGV[j + 2]
        if not delayed then depth = depth + 1 end
      elseif delayed then
        redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3] .. '\n' .. ARGV[j + 2])
      else
        redis.call('LPUSH', KEYS[1], ARGV[j + 2])
        depth = depth + 1
        pushed = pushed + 1
      end
      replies[#replies + 1] = false
    end
  end
end
if #fragments > 0 then
  local n = tostring(#fragments)
  local message = ARGV[13] .. table.concat(fragments, ',') .. ARGV[14] .. n .. ARGV[15] .. n
    .. ARGV[16]
  if delayed then
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3] .. '\n' .. message)
  else
    redis.call('LPUSH', KEYS[1], message)
    if #fragments > 1 then redis.call('HINCRBY', KEYS[3], 'enveloped', #fragments - 1) end
    pushed = 1
  end
end
-- One wake token per message published (at most 64 kept), so a burst wakes as many idle consumers.
if pushed > 0 then
  local tokens = {}
  for i = 1, math.min(pushed, 64) do tokens[i] = '1' end
  redis.call('LPUSH', ARGV[4], unpack(tokens))
  redis.call('LTRIM', ARGV[4], 0, 63)
end
return replies
