-- Claim the next jobs of an envelope (workers/envelope_run.py) in one round trip, releasing the
-- claims of the previous batch, and count a death of the job an interrupted run was at.
--
-- KEYS[1]   the envelope's current-job marker      jobs:envelope:<envelope id>
-- ARGV[1]   owner token for the new claims         "<host>:<pid>:<random>"
-- ARGV[2]   lease of the claims, milliseconds
-- ARGV[3]   start-counter key of the job a previous delivery was at, or "" (first batch of a
--           redelivered envelope only)              jobs:starts:<run>
-- ARGV[4]   start-counter retention, seconds
-- ARGV[5]   owner token of the previous batch's claims, or ""
-- ARGV[6]   n: how many claim keys of the previous batch follow (released if still ours)
-- ARGV[7 .. 6+n]      those claim keys
-- then      per job to claim, two each: completion marker jobs:done:<key>, claim jobs:claim:<key>
--           (keys passed as ARGV, like admit.lua: a single Redis node only)
-- Returns {deaths, state per job}: deaths = the start counter after counting this redelivery
-- (0 without ARGV[3]); state = 0 claimed, -1 already done, > 0 claim held elsewhere (its TTL, ms).
local n = tonumber(ARGV[6])
if ARGV[5] ~= '' then
  for i = 7, 6 + n do
    if redis.call('GET', ARGV[i]) == ARGV[5] then redis.call('DEL', ARGV[i]) end
  end
end
local deaths = 0
if ARGV[3] ~= '' then
  deaths = redis.call('INCR', ARGV[3])
  redis.call('EXPIRE', ARGV[3], ARGV[4])
end
local states = {deaths}
for i = 7 + n, #ARGV, 2 do
  local state
  if redis.call('EXISTS', ARGV[i]) == 1 then
    state = -1
  elseif redis.call('SET', ARGV[i + 1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    state = 0
  else
    state = math.max(redis.call('PTTL', ARGV[i + 1]), 1)
  end
  states[#states + 1] = state
end
return states
