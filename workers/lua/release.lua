-- Compare-and-delete a claim: by exact owner token, or by owner prefix ("<host>:<pid>:") when
-- the parent process releases claims of a child process that died.
--
-- KEYS[1]   claim                              jobs:claim:<key>
-- ARGV[1]   owner token, or owner prefix
-- ARGV[2]   "exact" | "prefix"
local owner = redis.call('GET', KEYS[1])
if not owner then return 0 end
if owner == ARGV[1] or (ARGV[2] == 'prefix' and string.sub(owner, 1, #ARGV[1]) == ARGV[1]) then
  return redis.call('DEL', KEYS[1])
end
return 0
