-- One run of a warmer at a time. The run lock carries an owner token, the run's chunk total
-- and (beside it) the set of finished chunks; it ends with the last chunk, or with its lease
-- when chunks were lost.
--
-- KEYS[1]   run                                jobs:cache:run:<warmer>
--           hash: token, total (-1 until the keys are listed), started (unix ms)
-- KEYS[2]   finished chunks                    jobs:cache:run:<warmer>:done (set)
-- ARGV[1]   "start" | "total" | "finish" | "end"
-- ARGV[2]   run token
-- ARGV[3]   start: lease, ms; total: number of chunks; finish: chunk number
-- start  -> 1 started, 2 resumed (same token: a re-run of the same warm job), 0 busy
-- total  -> 1 when that ends the run (no chunks, or all finished already), 0 not yet
-- finish -> 1 when this chunk ends the run, 0 not yet
-- end    -> 1 released, 0 not ours
-- total/finish return -1 when the run is not ours (any more): a chunk of an expired run.
local owner = redis.call('HGET', KEYS[1], 'token')
local mode = ARGV[1]
if mode == 'start' then
  if owner and owner ~= ARGV[2] then return 0 end
  if owner then
    redis.call('PEXPIRE', KEYS[1], ARGV[3])
    return 2
  end
  local t = redis.call('TIME')
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'token', ARGV[2], 'total', -1,
             'started', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
if owner ~= ARGV[2] then
  if mode == 'end' then return 0 end
  return -1
end
if mode == 'end' then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
if mode == 'total' then
  redis.call('HSET', KEYS[1], 'total', ARGV[3])
else
  redis.call('SADD', KEYS[2], ARGV[3])
  local ttl = redis.call('PTTL', KEYS[1])
  if ttl > 0 then redis.call('PEXPIRE', KEYS[2], ttl) end
end
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
if total >= 0 and redis.call('SCARD', KEYS[2]) >= total then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
