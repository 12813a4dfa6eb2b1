-- Delete dead letters, and the records of those jobs that are still dead-lettered as that
-- letter (a job requeued since, and perhaps running again, keeps its record).
--
-- KEYS[1] dead-letter stream
-- ARGV[1] job key prefix, ARGV[2..] pairs: dead-letter entry id, job id ('' if none)
-- Returns the number of letters deleted.
check_type(KEYS[1], 'stream')
local deleted = 0
for i = 2, #ARGV, 2 do
  local entry, id = ARGV[i], ARGV[i + 1]
  if id ~= '' then
    local key = ARGV[1] .. id
    local rec = hmget(key, 's', 'de')
    if rec and rec[1] == 'failed' and rec[2] == entry then
      redis.call('DEL', key)
    end
  end
  if stream_id(entry) then
    deleted = deleted + redis.call('XDEL', KEYS[1], entry)
  end
end
return deleted
