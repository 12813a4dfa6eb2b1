-- Record the progress of an attempt, only while it runs on this worker: a late report from
-- a worker that lost the job (or after the job ended) must not recreate or alter the record.
--
-- KEYS[1] job key
-- ARGV[1] progress (msgpack), ARGV[2] consumer
-- Returns 1 if recorded, 0 if not.
local rec = hmget(KEYS[1], 's', 'w')
if rec and rec[1] == 'running' and rec[2] == ARGV[2] then
  redis.call('HSET', KEYS[1], 'p', ARGV[1])
  return 1
end
return 0
