-- Put into the scripts that write mjhook's shared keys (taskstate._script fills it in).
-- wrong_key_type({{key, type}, ...}): a WRONGTYPE error reply for the first key that holds another
-- type than the one given (a mistaken SET, say), or nil when each holds that type or nothing; a
-- key named '' is not looked at. A script checks before its first write: Redis keeps what a
-- script wrote before an error.
local function wrong_key_type(expected)
  for _, pair in ipairs(expected) do
    if pair[1] ~= '' then
      local kind = redis.call('TYPE', pair[1])['ok']
      if kind ~= 'none' and kind ~= pair[2] then
        return redis.error_reply('WRONGTYPE ' .. pair[1] .. ' holds a ' .. kind .. ', not a ' .. pair[2])
      end
    end
  end
  return nil
end
