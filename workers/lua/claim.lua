-- Claim a job's idempotency key before running it.
--
-- KEYS[1]   completion marker                  jobs:done:<key>
-- KEYS[2]   claim                              jobs:claim:<key> (value: owner token)
-- KEYS[3]   start counter of this attempt      jobs:starts:<key>:<attempt>
-- ARGV[1]   owner token "<host>:<pid>:<random>"
-- ARGV[2]   lease, milliseconds
-- ARGV[3]   start-counter retention, seconds
-- Returns {"done", 0} | {"claimed", starts of this attempt} | {"busy", claim ttl ms}.
-- A start count above 1 means an earlier run of this attempt died with its worker.
if redis.call('EXISTS', KEYS[1]) == 1 then return {'done', 0} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local starts = redis.call('INCR', KEYS[3])
  redis.call('EXPIRE', KEYS[3], ARGV[3])
  return {'claimed', starts}
end
return {'busy', redis.call('PTTL', KEYS[2])}
