-- Move due jobs from the delayed set into the stream, at most ARGV[2] per call. A job is
-- removed from the set and added to the stream in one step, so it is never both delayed and
-- queued, never dropped, and never promoted twice, however many schedulers run this at once.
-- A job past its expiry is finished as expired instead. An id whose job key is not a hash
-- is dead-lettered with the reason (it can never run); an id without a record, or whose
-- job is no longer scheduled, is dropped (it was aborted, purged or requeued meanwhile).
-- The stream and the dead-letter stream are checked before anything is written.
--
-- KEYS[1] stream, KEYS[2] delayed set, KEYS[3] stats hash, KEYS[4] dead-letter stream,
-- KEYS[5] ended index (expired jobs are noted there)
-- ARGV[1] job key prefix, ARGV[2] batch limit, ARGV[3] done channel prefix,
-- ARGV[4] TTL s for expired records, ARGV[5] per-minute counters key prefix,
-- ARGV[6] most dead letters kept, ARGV[7] longest a dead letter is kept (ms),
-- ARGV[8] concurrency wait set prefix (optional: a job that expired while it waited on a
-- concurrency limit, `cw`, leaves that limit's wait set)
-- Returns {promoted, expired, next due ms (-1 if none), now ms}
check_type(KEYS[1], 'stream')
check_type(KEYS[4], 'stream')
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local promoted, expired, dead = 0, 0, 0
local ended = {}
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[2], id)
  local key = ARGV[1] .. id
  local rec = hmget(key, 's', 'x', 'cw')
  if not rec then
    redis.call('XADD', KEYS[4], '*', 'i', id, 'r', 'the job key ' .. key ..
      ' holds something other than a hash', 't', now)
    dead = dead + 1
  elseif rec[1] == 'scheduled' then
    local expires = int(rec[2])
    if expires and now >= expires then
      finish(key, ARGV[3] .. id, 'expired', now, tonumber(ARGV[4]))
      if rec[3] and ARGV[8] then
        redis.pcall('ZREM', ARGV[8] .. rec[3], id)
      end
      ended[#ended + 1] = id
      ended[#ended + 1] = now
      expired = expired + 1
    else
      local entry = redis.call('XADD', KEYS[1], '*', 'i', id)
      redis.call('HSET', key, 's', 'queued', 'e', entry)
      promoted = promoted + 1
    end
  end
end
count(KEYS[3], 'expired', expired)
count(KEYS[3], 'failed', dead)
if dead > 0 then
  count(KEYS[3], 'trimmed', trim_dead(KEYS[4], ARGV[1], tonumber(ARGV[6]),
    tonumber(ARGV[7]), now))
end
count_minute(ARGV[5], now, {expired = expired > 0 and expired or nil,
  failed = dead > 0 and dead or nil})
index_ended(KEYS[5], ended)
local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local next_due = first[2] and tonumber(first[2]) or -1
return {promoted, expired, next_due, now}
