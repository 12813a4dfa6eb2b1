-- Enqueue one cron tick under its deterministic job id, or only advance the cursor.
-- The cursor (last tick handled, ms) only moves forward, so a tick is enqueued at most once
-- even when two schedulers overlap for a moment, and even after the job's record expired.
-- A cursor that is not a number is treated as absent (and overwritten).
--
-- KEYS[1] cron hash, KEYS[2] job key, KEYS[3] stream, KEYS[4] stats hash
-- ARGV[1] cron name, ARGV[2] tick ms, ARGV[3] mode ('fire' | 'advance'),
-- ARGV[4] job id, ARGV[5] spec, ARGV[6] no overlap (1|0), ARGV[7] job key prefix
-- Returns 'enqueued' | 'advanced' | 'stale' (tick <= cursor) | 'overlap' (previous run of
-- this cron job still queued or running: tick skipped) | 'duplicate' (job id exists)
check_type(KEYS[1], 'hash')
check_type(KEYS[3], 'stream')
local name, tick = ARGV[1], tonumber(ARGV[2])
local cursor = int(redis.call('HGET', KEYS[1], name)) or -1
if tick <= cursor then
  return 'stale'
end
redis.call('HSET', KEYS[1], name, tick)
if ARGV[3] == 'advance' then
  return 'advanced'
end
if ARGV[6] == '1' then
  local previous = redis.call('HGET', KEYS[1], name .. ':job')
  if previous then
    local rec = hmget(ARGV[7] .. previous, 's') or {}
    local state = rec[1]
    if state == 'queued' or state == 'running' or state == 'scheduled' then
      return 'overlap'
    end
  end
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 'duplicate'
end
local entry = redis.call('XADD', KEYS[3], '*', 'i', ARGV[4])
redis.call('HSET', KEYS[2], 'j', ARGV[5], 'a', 0, 's', 'queued', 'e', entry)
redis.call('HSET', KEYS[1], name .. ':job', ARGV[4])
count(KEYS[4], 'enqueued', 1)
return 'enqueued'
