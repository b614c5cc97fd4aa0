-- Circuit breaker of one destination: every decision and every recorded result, atomically.
--
-- KEYS[1]   breaker state (hash)               jobs:breaker:<name>
-- KEYS[2]   registry of breaker names (set)    jobs:breakers (listing needs no SCAN)
-- ARGV[1]   operation: allow | success | failure | neutral | peek | reset
-- ARGV[2]   destination name (the member of KEYS[2])
-- ARGV[3]   now, unix milliseconds; "" = the Redis server's clock (one clock for all workers)
-- ARGV[4]   failures within the window that open a closed breaker
-- ARGV[5]   failure ratio that opens it ...
-- ARGV[6]   ... once at least this many calls completed within the window
-- ARGV[7]   window, milliseconds
-- ARGV[8]   open time, milliseconds (open -> half-open)
-- ARGV[9]   probes let through while half-open
-- ARGV[10]  probe lease, milliseconds: a probe slot not given back by then is presumed lost
--           (its worker died) and is handed out again
-- ARGV[11]  generation the caller was allowed in (record operations; "" = unknown)
-- ARGV[12]  "1" when the caller holds a half-open probe slot (record operations)
--
-- Hash layout (KEYS[1]):
--   state      closed | open | half_open          (missing hash = closed, nothing counted)
--   gen        incremented on every state change; results of an older generation cannot
--              change an open or half-open breaker (a slow call from before it opened)
--   opened_at  ms when it last opened;  until  ms when it turns half-open
--   inflight   probes handed out and not yet reported;  probe_at  ms of the latest one
--   b<i> f<i> c<i>  (i = 0..9) ring of 10 buckets of window/10 ms each: bucket number,
--              failures, calls (a call = a reported success or failure)
-- Every write refreshes the hash's TTL to window + open time + probe lease, so idle
-- destinations disappear by themselves (an expired breaker is a closed one).
--
-- Returns:
--   allow            {"allow", 0, gen, probe 0|1} | {"deny", wait ms, gen, 0} (open)
--                    | {"busy", 0, gen, 0} (half-open, every probe slot taken)
--   success/failure/neutral   {state after, gen}
--   peek             {state, failures, calls, opened_at, until, inflight, gen} | {"missing"}
--                    (a name whose hash expired is removed from the registry)
--   reset            1 if there was state, else 0

local key, registry = KEYS[1], KEYS[2]
local op, name = ARGV[1], ARGV[2]
local now = tonumber(ARGV[3])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local max_failures = tonumber(ARGV[4])
local ratio = tonumber(ARGV[5])
local min_calls = tonumber(ARGV[6])
local window = tonumber(ARGV[7])
local open_ms = tonumber(ARGV[8])
local probes = tonumber(ARGV[9])
local lease = tonumber(ARGV[10])
local caller_gen = tonumber(ARGV[11])
local is_probe = ARGV[12] == '1'

local BUCKETS = 10
local width = math.max(1, math.ceil(window / BUCKETS))
local current = math.floor(now / width)

if op == 'reset' then
  redis.call('SREM', registry, name)
  return redis.call('DEL', key)
end

local exists = redis.call('EXISTS', key) == 1
local h = {}
if exists then
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do h[flat[i]] = flat[i + 1] end
end
local state = h.state or 'closed'
local gen = tonumber(h.gen or '0')

local function window_counts()
  local failures, calls = 0, 0
  for i = 0, BUCKETS - 1 do
    local b = tonumber(h['b' .. i] or '-1')
    if b > current - BUCKETS and b <= current then
      failures = failures + tonumber(h['f' .. i] or '0')
      calls = calls + tonumber(h['c' .. i] or '0')
    end
  end
  return failures, calls
end

local function save(fields)
  local flat = {}
  for field, value in pairs(fields) do
    flat[#flat + 1] = field
    flat[#flat + 1] = value
    h[field] = tostring(value)
  end
  redis.call('HSET', key, unpack(flat))
  redis.call('PEXPIRE', key, window + open_ms + lease)
  redis.call('SADD', registry, name)
end

local function clear_buckets()
  local names = {}
  for i = 0, BUCKETS - 1 do
    names[#names + 1] = 'b' .. i
    names[#names + 1] = 'f' .. i
    names[#names + 1] = 'c' .. i
    h['b' .. i], h['f' .. i], h['c' .. i] = nil, nil, nil
  end
  redis.call('HDEL', key, unpack(names))
end

local function open_now()
  gen = gen + 1
  state = 'open'
  save({state = 'open', gen = gen, opened_at = now, ['until'] = now + open_ms, inflight = 0})
end

if op == 'peek' then
  if not exists then
    redis.call('SREM', registry, name)
    return {'missing'}
  end
  local failures, calls = window_counts()
  local shown = state
  if state == 'open' and now >= tonumber(h['until']) then shown = 'half_open' end
  return {shown, failures, calls, tonumber(h.opened_at or '0'), tonumber(h['until'] or '0'),
          tonumber(h.inflight or '0'), gen}
end

if op == 'allow' then
  if state == 'closed' then return {'allow', 0, gen, 0} end
  if state == 'open' then
    local wait = tonumber(h['until']) - now
    if wait > 0 then return {'deny', wait, gen, 0} end
    gen = gen + 1
    state = 'half_open'
    save({state = 'half_open', gen = gen, inflight = 0, probe_at = now})
  end
  local inflight = tonumber(h.inflight or '0')
  if inflight >= probes and now - tonumber(h.probe_at or '0') >= lease then
    inflight = 0  -- every slot outlived its lease: those probes died with their workers
  end
  if inflight < probes then
    save({inflight = inflight + 1, probe_at = now})
    return {'allow', 0, gen, 1}
  end
  return {'busy', 0, gen, 0}
end

-- success | failure | neutral: the result of a call the caller was allowed to make.
if state == 'closed' then
  if op == 'neutral' then return {state, gen} end
  local slot = current % BUCKETS
  local fields = {}
  if tonumber(h['b' .. slot] or '-1') ~= current then
    fields['b' .. slot], fields['f' .. slot], fields['c' .. slot] = current, 0, 0
  else
    fields['f' .. slot] = tonumber(h['f' .. slot] or '0')
    fields['c' .. slot] = tonumber(h['c' .. slot] or '0')
  end
  fields['c' .. slot] = fields['c' .. slot] + 1
  if op == 'failure' then fields['f' .. slot] = fields['f' .. slot] + 1 end
  if not exists then fields.state, fields.gen = 'closed', gen end
  save(fields)
  if op == 'failure' then
    local failures, calls = window_counts()
    if failures >= max_failures or (calls >= min_calls and failures >= ratio * calls) then
      open_now()
    end
  end
  return {state, gen}
end

if state == 'half_open' and is_probe and caller_gen == gen then
  if op == 'success' then
    gen = gen + 1
    state = 'closed'
    clear_buckets()
    save({state = 'closed', gen = gen, inflight = 0})
  elseif op == 'failure' then
    open_now()
  else
    save({inflight = math.max(0, tonumber(h.inflight or '0') - 1)})
  end
end
-- Open, or a result from an older generation: it cannot change the state.
return {state, gen}
