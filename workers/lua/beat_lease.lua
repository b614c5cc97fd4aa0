-- The beat leader's lease, with a fencing number that grows with every new leadership.
--
-- KEYS[1]   lease                              jobs:beat:leader (value "<fence> <identity>")
-- KEYS[2]   fence counter                      jobs:beat:fence
-- ARGV[1]   "acquire" | "release"
-- ARGV[2]   acquire: the candidate's identity; release: the held value "<fence> <identity>"
-- ARGV[3]   lease, ms (acquire)
-- acquire -> the held value (a new leadership) or false while another beat holds the lease
-- release -> 1 released, 0 not held (it expired and maybe another beat took it)
if ARGV[1] == 'release' then
  if redis.call('GET', KEYS[1]) == ARGV[2] then return redis.call('DEL', KEYS[1]) end
  return 0
end
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local held = redis.call('INCR', KEYS[2]) .. ' ' .. ARGV[2]
redis.call('SET', KEYS[1], held, 'PX', ARGV[3])
return held
