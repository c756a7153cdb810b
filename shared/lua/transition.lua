-- Move one task to a new state, atomically: the record, its state index and the recent index.
-- KEYS[1] task hash, KEYS[2] recent index, KEYS[3] the task's lease (a worker's token, expiring)
-- ARGV[1] task id      ARGV[2] new state        ARGV[3] now (ms)
-- ARGV[4] ttl (s)      ARGV[5] "0": always; "1": only when the task has no state yet; state
--                      names, separated by spaces: only when the task has no state yet or is
--                      in one of those states
-- ARGV[6] recent cap   ARGV[7] state index key prefix
-- ARGV[8] lease rule: "any": whoever holds the lease; "free": only while no worker holds it;
--         "held": only while the lease holds the token ARGV[9]
-- ARGV[9] that token (any string for the other rules)
-- ARGV[10..] field, value pairs to set on the record
-- With KEYS[4] (a dramatiq Redis queue list) and KEYS[5] (its ".msgs" hash), ARGV[10] and ARGV[11]
-- are a message id and body to enqueue in the same call, whatever the guards decide (a duplicate
-- is queued again; the worker deduplicates), and the field pairs start at ARGV[12].
-- Returns the previous state, or false when there was none; {"lease", previous state or ""}
-- when the lease rule refused the move (nothing changed then). The record is judged first, and a
-- key that holds something else than a record, or a state not in KNOWN_STATES (filled in when the
-- script is loaded), fails the call with a TASKRECORD error before anything is written or queued
-- (Redis keeps what a script wrote before an error), and so does one of the other keys it writes
-- or reads holding another type than its own (a mistaken SET, say).
{WRONG_KEY_TYPE}
local old = redis.pcall('HGET', KEYS[1], 'state')
if type(old) == 'table' then
  return redis.error_reply('TASKRECORD its key holds something else than a task record')
end
local known = {}
for state in string.gmatch('{KNOWN_STATES}', '%S+') do known[state] = true end
if old and not known[old] then
  return redis.error_reply('TASKRECORD a state this version does not know: ' .. string.sub(old, 1, 40))
end
local expected = {{KEYS[2], 'zset'}, {ARGV[7] .. ARGV[2], 'zset'}}
if old then
  expected[#expected + 1] = {ARGV[7] .. old, 'zset'}
end
if #KEYS == 5 then
  expected[#expected + 1] = {KEYS[4], 'list'}
  expected[#expected + 1] = {KEYS[5], 'hash'}
end
local wrong = wrong_key_type(expected)
if wrong then return wrong end
local first_field = 10
if #KEYS == 5 then
  redis.call('HSET', KEYS[5], ARGV[10], ARGV[11])
  redis.call('RPUSH', KEYS[4], ARGV[10])
  first_field = 12
end
if ARGV[5] ~= '0' and old and not string.find(' ' .. ARGV[5] .. ' ', ' ' .. old .. ' ', 1, true) then
  return old
end
if ARGV[8] ~= 'any' then
  local holder = redis.call('GET', KEYS[3])
  if (ARGV[8] == 'free' and holder) or (ARGV[8] == 'held' and holder ~= ARGV[9]) then
    return {'lease', old or ''}
  end
end
local now = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
if old and old ~= ARGV[2] then
  redis.call('ZREM', ARGV[7] .. old, ARGV[1])
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'updatedAt', ARGV[3])
for i = first_field, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], ttl)
local index = ARGV[7] .. ARGV[2]
redis.call('ZADD', index, now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', index, '-inf', now - ttl * 1000)
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[6]) - 1)
return old
