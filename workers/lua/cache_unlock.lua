-- Compare-and-delete a per-key cache load lock: only its owner releases it (a holder whose
-- lease ran out must not delete the lock a later loader took).
--
-- KEYS[1]   lock                               jobs:cache:lock:<key> (value: owner token)
-- ARGV[1]   owner token
-- Returns 1 if released, 0 if the lock was not (any more) ours.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
