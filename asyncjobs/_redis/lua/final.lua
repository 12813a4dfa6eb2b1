-- Read a job's final state for Job.result(), and keep the job registered as waited for
-- (settles publish a job's end only while it is). The registration is the job's id, scored
-- with when it lapses: several waiters of one job share it (ZADD GT keeps the latest
-- lapse), and none removes it on leaving (another may still wait); it lapses on its own.
-- Lapsed registrations are pruned first: that write also lets the script run on a Redis at
-- its maxmemory. A waiting key that is not a sorted set is left alone (settles then publish
-- every end: see waited_for), so garbage there never fails a read of the job.
--
-- KEYS[1] job key, KEYS[2] waiting set
-- ARGV[1] the job's id, ARGV[2] how long the registration lasts (ms)
-- Returns the record's {state, result, history, dead-letter reason} (false when absent),
-- or {'kept', packed record, false, false} for a result kept in a shared hash (see keep);
-- a job key of the wrong type is a WRONGTYPE error.
local now = now_ms()
if type(redis.pcall('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)) == 'number' then
  redis.call('ZADD', KEYS[2], 'GT', now + tonumber(ARGV[2]), ARGV[1])
end
local rec = redis.pcall('HMGET', KEYS[1], 's', 'r', 'h', 'dl')
if type(rec) == 'table' and rec.err then
  return redis.error_reply(tostring(rec.err))
end
if not rec[1] then
  local kept = kept_value(KEYS[1], ARGV[1])
  if kept then
    return {'kept', kept, false, false}
  end
end
return rec
