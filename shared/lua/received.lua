-- Record several tasks as received and queue their messages, in one call: the ingress's group
-- commit (TaskStore.mark_received_many). For each task the same effects as transition.lua with
-- the "received" state, the "submitted" guard and a message to enqueue, with the calls that can be
-- shared made once: one HSET of all message bodies, one RPUSH of all message ids, one ZADD per
-- index and one trim of each.
-- KEYS[1] recent index   KEYS[2] dramatiq queue list   KEYS[3] its ".msgs" hash
-- KEYS[4..] the task hashes, one per task
-- ARGV[1] now (ms)   ARGV[2] ttl (s)   ARGV[3] recent cap   ARGV[4] state index key prefix
-- ARGV[5..] four per task: task id, receivedAt, message id ('' for none), message body
-- Returns one entry per task: its previous state, '' when it had none, or a TASKRECORD error when
-- its key holds something else than a task record or a state not in KNOWN_STATES (then nothing of
-- that task is written or queued). KNOWN_STATES is filled in when the script is loaded. A
-- task already known keeps its state unless it was "submitted"; its message is queued anyway (a
-- duplicate is queued again; the worker deduplicates).
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local prefix = ARGV[4]
local index = prefix .. 'received'
local known = {}
for state in string.gmatch('{KNOWN_STATES}', '%S+') do known[state] = true end
{WRONG_KEY_TYPE}
-- The shared keys first: one holding another type (a mistaken SET, say) fails the whole call
-- before anything is written, rather than after the task records were (received, never queued).
-- The "submitted" index too, which a task leaving that state is removed from.
local wrong = wrong_key_type({
  {KEYS[1], 'zset'}, {index, 'zset'}, {prefix .. 'submitted', 'zset'}, {KEYS[2], 'list'}, {KEYS[3], 'hash'}
})
if wrong then return wrong end
local bodies, ids, members, olds = {}, {}, {}, {}
for n = 4, #KEYS do
  local at = 5 + (n - 4) * 4
  local task_id, message_id = ARGV[at], ARGV[at + 2]
  local old = redis.pcall('HGET', KEYS[n], 'state')
  if type(old) == 'table' then
    -- An error reply: the key holds something else than a task record.
    olds[#olds + 1] = {err = 'TASKRECORD its key holds something else than a task record'}
  elseif old and not known[old] then
    olds[#olds + 1] = {err = 'TASKRECORD a state this version does not know: ' .. string.sub(old, 1, 40)}
  else
    olds[#olds + 1] = old or ''
    if message_id ~= '' then
      bodies[#bodies + 1] = message_id
      bodies[#bodies + 1] = ARGV[at + 3]
      ids[#ids + 1] = message_id
    end
    if not old or old == 'submitted' then
      if old then
        redis.call('ZREM', prefix .. old, task_id)
      end
      redis.call('HSET', KEYS[n], 'state', 'received', 'updatedAt', ARGV[1], 'receivedAt', ARGV[at + 1])
      redis.call('EXPIRE', KEYS[n], ttl)
      members[#members + 1] = now
      members[#members + 1] = task_id
    end
  end
end
if #ids > 0 then
  redis.call('HSET', KEYS[3], unpack(bodies))
  redis.call('RPUSH', KEYS[2], unpack(ids))
end
if #members > 0 then
  redis.call('ZADD', index, unpack(members))
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now - ttl * 1000)
  redis.call('ZADD', KEYS[1], unpack(members))
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[3]) - 1)
end
return olds
