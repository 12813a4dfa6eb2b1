-- Read a job's final state for Job.result(), and keep the caller registered as waiting on
-- the queue (settles publish a job's end only while someone waits). Lapsed registrations
-- are pruned first: that write also lets the script run on a Redis at its maxmemory.
--
-- KEYS[1] job key, KEYS[2] waiting set
-- ARGV[1] the waiter's token, ARGV[2] how long the registration lasts (ms)
-- Returns the record's {state, result, history, dead-letter reason} (false when absent);
-- a job key of the wrong type is a WRONGTYPE error.
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
local rec = redis.pcall('HMGET', KEYS[1], 's', 'r', 'h', 'dl')
if type(rec) == 'table' and rec.err then
  return redis.error_reply(tostring(rec.err))
end
return rec
