-- Requeue a dead-lettered job: same job id, error history kept, attempts and expiry reset;
-- its entry leaves the dead-letter stream.
--
-- KEYS[1] job key, KEYS[2] stream, KEYS[3] dead-letter stream
-- ARGV[1] job id
-- Returns 'queued', 'missing' (no record: a raw entry, or purged), 'unreadable' (the job
-- key is not a hash) or the job's state when it is not dead-lettered.
local key = KEYS[1]
local rec = hmget(key, 's', 'de')
if not rec then
  return 'unreadable'
end
if not rec[1] then
  return kept_exists(key, ARGV[1]) and 'complete' or 'missing'
end
if rec[1] ~= 'failed' then
  return rec[1]
end
check_type(KEYS[2], 'stream')
check_type(KEYS[3], 'stream')
local entry = redis.call('XADD', KEYS[2], '*', 'i', ARGV[1])
redis.call('HSET', key, 's', 'queued', 'e', entry, 'a', 0)
redis.call('HDEL', key, 'dl', 'de', 'et', 'w', 'ab', 'r', 'x', 'd')
redis.call('PERSIST', key)
if stream_id(rec[2]) then
  redis.call('XDEL', KEYS[3], rec[2])
end
return 'queued'
