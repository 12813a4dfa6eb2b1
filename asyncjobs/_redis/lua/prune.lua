-- Delete consumers that hold nothing and have been idle for long (workers that were killed
-- leave theirs behind). Checked and deleted in one step: deleting a consumer drops its
-- pending entries, so one that holds anything is never touched.
--
-- KEYS[1] stream
-- ARGV[1] group, ARGV[2] min idle ms, ARGV[3] consumer to keep (the caller)
-- Returns the number of consumers deleted.
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then
  return 0
end
local deleted = 0
for _, consumer in ipairs(consumers) do
  local info = {}
  for i = 1, #consumer, 2 do info[consumer[i]] = consumer[i + 1] end
  if info['name'] ~= ARGV[3] and tonumber(info['pending']) == 0
      and tonumber(info['idle']) >= tonumber(ARGV[2]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], info['name'])
    deleted = deleted + 1
  end
end
return deleted
