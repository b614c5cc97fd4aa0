-- Cluster-wide rate limit (GCRA with reservations), adaptive, in one atomic step.
--
-- KEYS[1]   limiter state            jobs:rate:<name>  (hash, see below)
-- KEYS[2]   run-time overrides       jobs:limits       (hash: limit name -> "<n>/<s|m|h>,<burst>")
-- ARGV[1]   limit name               "<task>" or "<task>:<key>" (field looked up in KEYS[2])
-- ARGV[2]   fallback override name   "<task>" for a per-key limit, else ""
-- ARGV[3]   declared emission interval, milliseconds per job ("" = no declared rate)
-- ARGV[4]   declared burst (jobs allowed back to back)
-- ARGV[5]   job id: a denied job gets a reservation for the slot it is told to wait for
--           ("" = no reservation: just answer)
-- ARGV[6]   adaptive recovery: fraction of the rate regained per quiet second
-- ARGV[7]   tolerance, milliseconds: a reserved job arriving this early still runs
--
-- State hash KEYS[1]:
--   tat      theoretical arrival time (ms): the next free slot is tat - (burst-1)*interval
--   cfg      the rate the state was built for; when the limit changes (override set/reset,
--            new declaration) the backlog and every reservation are forgotten
--   f, dt    adaptive factor set by throttle.lua at time dt (ms); recovers additively
--   bu       blocked until (ms), from a downstream's Retry-After: nothing is admitted before
--   r:<id>   reservation: the slot (ms) job <id> was parked for; it runs when it comes back
--
-- The interval in use is interval / factor, factor = min(1, f + recovery * quiet seconds),
-- quiet seconds counted from max(dt, bu): computed lazily here, no background job.
-- Time is Redis server time (TIME), so every worker host agrees.
-- Returns 0 when the job may run now, else the wait in milliseconds until its slot.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local units = { s = 1000, m = 60000, h = 3600000 }

local interval, burst, cfg
local raw = redis.call('HGET', KEYS[2], ARGV[1])
if not raw and ARGV[2] ~= '' then raw = redis.call('HGET', KEYS[2], ARGV[2]) end
if raw then
  local n, unit, b = string.match(raw, '^([%d%.]+)/(%a),(%d+)$')
  if n and units[unit] and tonumber(n) > 0 then
    interval = units[unit] / tonumber(n)
    burst = tonumber(b)
    cfg = 'o:' .. raw
  end
end
if not interval then
  if ARGV[3] == '' then return 0 end
  interval = tonumber(ARGV[3])
  burst = tonumber(ARGV[4])
  cfg = 'd:' .. ARGV[3] .. ',' .. ARGV[4]
end
if burst < 1 then burst = 1 end

local state = redis.call('HMGET', KEYS[1], 'tat', 'f', 'dt', 'bu', 'cfg')
local tat = tonumber(state[1]) or 0
local f = tonumber(state[2]) or 1
local dt = tonumber(state[3]) or 0
local bu = tonumber(state[4]) or 0
if state[5] and state[5] ~= cfg then
  -- The limit changed: forget the backlog and the reservations, keep the adaptive state.
  redis.call('DEL', KEYS[1])
  tat = 0
  if f < 1 then redis.call('HSET', KEYS[1], 'f', f, 'dt', dt) end
  if bu > 0 then redis.call('HSET', KEYS[1], 'bu', bu) end
end

local rec = tonumber(ARGV[6])
local factor = 1
if f < 1 then factor = math.min(1, f + rec * math.max(0, now - math.max(dt, bu)) / 1000) end
local horizon = 60000
if factor < 1 then horizon = horizon + (1 - factor) / rec * 1000 end

local job = ARGV[5]
if job ~= '' and state[5] == cfg then
  local slot = tonumber(redis.call('HGET', KEYS[1], 'r:' .. job))
  if slot then
    if slot - now > tonumber(ARGV[7]) then return math.ceil(slot - now) end
    redis.call('HDEL', KEYS[1], 'r:' .. job)
    return 0
  end
end

local step = interval / factor
local tolerance = (burst - 1) * step
-- After a block, the burst is earned again from the end of the block (no burst on unblock).
tat = math.max(tat, now, bu + tolerance)
local earliest = math.max(tat - tolerance, bu)
local wait = 0
if earliest > now then
  if job == '' then return math.ceil(earliest - now) end
  wait = math.ceil(earliest - now)
  redis.call('HSET', KEYS[1], 'r:' .. job, earliest)
end
tat = tat + step
redis.call('HSET', KEYS[1], 'tat', tat, 'cfg', cfg)
redis.call('PEXPIRE', KEYS[1], math.ceil(math.max(tat, bu) - now + horizon))
return wait
