-- Mark a job's key done and drop our claim. The side effect has happened, so the key is marked
-- done even if our lease was lost meanwhile: no later run may repeat it.
--
-- KEYS[1]   completion marker                  jobs:done:<key>
-- KEYS[2]   claim                              jobs:claim:<key>
-- ARGV[1]   owner token
-- ARGV[2]   retention of the completion marker, seconds
redis.call('SET', KEYS[1], '1', 'EX', ARGV[2])
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
return 1
