-- Take up to ARGV[3] members of the sorted set KEYS[1] due by ARGV[1] (its score, ms), and push
-- each one's score to ARGV[2] (ms): taken by this caller, and due again then should the caller
-- stop before it removes them. Returns the members taken.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], 'XX', ARGV[2], member)
end
return due
