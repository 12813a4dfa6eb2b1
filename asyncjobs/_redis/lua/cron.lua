-- Enqueue one cron tick under its deterministic job id, or only advance the cursor.
-- The cursor (last tick handled, ms) only moves forward, so a tick is enqueued at most once
-- even when two schedulers overlap for a moment, and even after the job's record expired.
-- A cursor that is not a number is treated as absent (and overwritten). Mode 'reset' is
-- the one way back: it sets the cursor to the tick only if the cursor still holds what the
-- caller read (one it found unusable: see cron.read_cursor), so a leader that raced it and
-- moved the cursor on keeps its move.
--
-- KEYS[1] cron hash, KEYS[2] job key, KEYS[3] stream, KEYS[4] stats hash
-- ARGV[1] cron name, ARGV[2] tick ms, ARGV[3] mode ('fire' | 'advance' | 'reset'),
-- ARGV[4] job id (for 'reset': the cursor's value as read), ARGV[5] spec,
-- ARGV[6] no overlap (1|0), ARGV[7] job key prefix
-- Returns 'enqueued' | 'advanced' | 'reset' | 'stale' (tick <= cursor; for 'reset': the
-- cursor changed since it was read) | 'overlap' (previous run of this cron job still queued
-- or running: tick skipped) | 'duplicate' (job id exists)
check_type(KEYS[1], 'hash')
check_type(KEYS[3], 'stream')
local name, tick = ARGV[1], tonumber(ARGV[2])
if ARGV[3] == 'reset' then
  if redis.call('HGET', KEYS[1], name) ~= ARGV[4] then
    return 'stale'
  end
  redis.call('HSET', KEYS[1], name, tick)
  return 'reset'
end
local cursor = int(redis.call('HGET', KEYS[1], name)) or -1
if tick <= cursor then
  return 'stale'
end
redis.call('HSET', KEYS[1], name, tick)
if ARGV[3] == 'advance' then
  return 'advanced'
end
if ARGV[6] == '1' then
  -- Only one of its own tick ids names a previous run (any other id was not written here).
  local previous = redis.call('HGET', KEYS[1], name .. ':job')
  local own = 'cron:' .. name .. ':'
  if previous and string.sub(previous, 1, #own) == own then
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
