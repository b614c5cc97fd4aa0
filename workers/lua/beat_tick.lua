-- One step of the beat leader, done only while the lease is still its own (fencing: a leader
-- that lost its lease, e.g. after a long pause, renews, reads and records nothing). Times are
-- the Redis server's, so beats on hosts with skewed clocks agree on every entry's last run.
--
-- KEYS[1]   lease                              jobs:beat:leader (value "<fence> <identity>")
-- KEYS[2]   last runs                          jobs:beat:runs (hash: entry -> unix seconds)
-- KEYS[3]   last tick                          jobs:beat:last_tick (unix seconds)
-- ARGV[1]   the held value "<fence> <identity>"
-- ARGV[2]   lease, ms (renewed to this)
-- ARGV[3]   "read" | "write"
-- ARGV[4..] ("write") pairs: entry name, unix seconds (server clock) it fired
-- Returns false when the lease is not ours; else {server now, runs hash as a flat list}
-- ("read") or {server now} ("write").
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return false end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
local t = redis.call('TIME')
local now = string.format('%d.%06d', tonumber(t[1]), tonumber(t[2]))
redis.call('SET', KEYS[3], now)
if ARGV[3] == 'read' then return {now, redis.call('HGETALL', KEYS[2])} end
for i = 4, #ARGV, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
return {now}
