-- Requeue a dead-lettered job: same job id, error history kept, attempts and expiry reset;
-- its entry leaves the dead-letter stream.
--
-- With a letter (ARGV[2], requeue_all), the job is requeued only if it is still
-- dead-lettered as that letter (or as no letter in particular), checked here in the same
-- step as the requeue: a letter read before the job was requeued, or dead-lettered again,
-- by anyone else, requeues nothing.
--
-- KEYS[1] job key, KEYS[2] stream, KEYS[3] dead-letter stream
-- ARGV[1] job id, ARGV[2] (optional) the dead-letter entry id the caller requeues from
-- Returns 'queued' ('requeued' when ARGV[2] is given: never a job's state), 'missing' (no
-- record: a raw entry, or purged), 'unreadable' (the job key is not a hash), 'stale' (ARGV[2]
-- given: the job is dead-lettered as another letter), 'already queued' (the job waits
-- already: its state, 'queued', would read as the success) or the job's state when it is
-- not dead-lettered.
local key = KEYS[1]
local rec = hmget(key, 's', 'de')
if not rec then
  return 'unreadable'
end
if not rec[1] then
  return kept_exists(key, ARGV[1]) and 'complete' or 'missing'
end
if rec[1] == 'queued' then
  return 'already queued'
end
if rec[1] ~= 'failed' then
  return rec[1]
end
local letter = ARGV[2]
if letter and rec[2] and rec[2] ~= letter then
  return 'stale'
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
return letter and 'requeued' or 'queued'
