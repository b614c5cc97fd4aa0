-- Claim a batch of a write buffer's rows for one flush, after pushing orphaned claims back.
--
-- A claimed batch is kept as ONE string, its rows joined by "\n" (a buffered row is compact
-- JSON: it holds no raw newline), so claiming, returning and dropping a batch cost one value,
-- not one list element per row.
--
-- Orphans first: every claim whose deadline has passed (its flush crashed, overran
-- claim_timeout, or gave its batch back by zeroing the deadline) has its rows pushed back to
-- the HEAD of the buffer, order kept, and is forgotten. Then up to ARGV[2] rows are taken from
-- the head of the buffer into this flush's batch and the claim is recorded with its deadline.
-- A batch smaller than ARGV[2] is claimed only when the buffer's oldest row was appended at
-- least ARGV[6] seconds ago (rows start with {"_at":<unix seconds>,...}); ARGV[6] < 0 claims
-- any batch.
--
-- KEYS[1]   buffer list, oldest row at the head       jobs:buffer:<name>
-- KEYS[2]   claims: flush token -> deadline (zset)   jobs:buffer:<name>:claims
-- KEYS[3]   this flush's batch (string)              jobs:buffer:<name>:processing:<token>
-- ARGV[1]   flush token
-- ARGV[2]   batch size
-- ARGV[3]   claim deadline, unix seconds
-- ARGV[4]   now, unix seconds
-- ARGV[5]   batch key prefix (KEYS[3] without the token)
-- ARGV[6]   max age of a partial batch, seconds (< 0: always claim)
-- Returns {rows reclaimed from orphans, rows left in the buffer, batch ("" when none)}
local batch = tonumber(ARGV[2])
local now = tonumber(ARGV[4])
local max_age = tonumber(ARGV[6])

local reclaimed = 0
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)
for _, token in ipairs(expired) do
  local orphan = ARGV[5] .. token
  local blob = redis.call('GET', orphan)
  if blob then
    local rows = {}
    for row in string.gmatch(blob, '[^\n]+') do
      rows[#rows + 1] = row
    end
    -- LPUSH a b c leaves c at the head: push chunks from the last, each one reversed.
    local last = #rows
    while last > 0 do
      local first = math.max(1, last - 999)
      local reversed = {}
      for i = last, first, -1 do
        reversed[#reversed + 1] = rows[i]
      end
      redis.call('LPUSH', KEYS[1], unpack(reversed))
      last = first - 1
    end
    reclaimed = reclaimed + #rows
    redis.call('DEL', orphan)
  end
  redis.call('ZREM', KEYS[2], token)
end

local length = redis.call('LLEN', KEYS[1])
local take = math.min(length, batch)
if take == 0 then
  return {reclaimed, length, ''}
end
if take < batch and max_age >= 0 then
  local head = redis.call('LINDEX', KEYS[1], 0)
  local at = tonumber(string.match(head, '^{"_at":([-0-9.eE+]+)'))
  if at and now - at < max_age then
    return {reclaimed, length, ''}
  end
end

local blob = table.concat(redis.call('LRANGE', KEYS[1], 0, take - 1), '\n')
redis.call('LTRIM', KEYS[1], take, -1)
redis.call('SET', KEYS[3], blob)
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return {reclaimed, length - take, blob}
