-- Abort a job. A scheduled or queued job ends `aborted` at once and never starts (its
-- stream entry is deleted; a worker that already read it acknowledges it without running
-- it). A running job gets an abort flag and a message to the workers, which cancel it.
--
-- A queued job that a concurrency limit's release let go (`cw`: it waited on that limit)
-- passes the slot it was let go for on to the limit's next waiter (pass_on).
--
-- KEYS[1] job key, KEYS[2] stream, KEYS[3] delayed set, KEYS[4] stats hash,
-- KEYS[5] ended index, KEYS[6] concurrency limits hash (optional)
-- ARGV[1] job id, ARGV[2] done channel, ARGV[3] abort channel, ARGV[4] record TTL s,
-- ARGV[5] concurrency wait set prefix (a job waiting on a concurrency limit, `cw`, leaves
-- that limit's wait set), ARGV[6] concurrency lease set prefix (optional)
-- Returns the state before the call, 'missing', or 'unreadable' (the job key is not a hash).
local key, id = KEYS[1], ARGV[1]
local rec = hmget(key, 's', 'e', 'cw')
if not rec then
  return 'unreadable'
end
local state = rec[1]
if not state then
  return kept_exists(key, id) and 'complete' or 'missing'
end
if state == 'scheduled' or state == 'queued' then
  check_type(KEYS[2], 'stream')
  check_type(KEYS[3], 'zset')
  if state == 'scheduled' then
    redis.call('ZREM', KEYS[3], id)
    if rec[3] and ARGV[5] then
      redis.pcall('ZREM', ARGV[5] .. rec[3], id)
    end
  elseif stream_id(rec[2]) then
    redis.call('XDEL', KEYS[2], rec[2])
  end
  if state == 'queued' and rec[3] and ARGV[6] and KEYS[6] then
    pass_on(ARGV[6], KEYS[6], rec[3])
  end
  count(KEYS[4], 'aborted', 1)
  local now = now_ms()
  finish(key, ARGV[2], 'aborted', now, tonumber(ARGV[4]))
  index_ended(KEYS[5], {id, now})
elseif state == 'running' then
  redis.call('HSET', key, 'ab', '1')
  redis.call(PUBLISH, ARGV[3], id)
end
return state
