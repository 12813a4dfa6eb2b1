-- Enqueue a batch of jobs: store each record and either XADD it to the stream or ZADD it to
-- the delayed set. A job id whose record exists (queued, scheduled, running, or a kept
-- result) is not enqueued again: the existing job's state is returned instead.
--
-- KEYS[1] stream, KEYS[2] delayed set, KEYS[3] stats hash, KEYS[4..] one job key per job
-- ARGV[1] wake channel
-- ARGV[2..] six values per job: job id, spec (msgpack), delay ms (0 = none),
--           due at ms (0 = none), expires in ms (0 = none), expires at ms (0 = none)
-- Returns the jobs that already existed, as a flat list: index (1-based), state, ...
-- (empty when every job was new, the usual case: a small reply for a large batch).
local now = now_ms()
local out = {}
local created = 0
for i = 1, #KEYS - 3 do
  local key = KEYS[3 + i]
  local b = 1 + (i - 1) * 6
  local id = ARGV[b + 1]
  local state = redis.call('HGET', key, 's')
  if state then
    out[#out + 1] = i
    out[#out + 1] = state
  else
    local delay, at = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
    local exp_in, exp_at = tonumber(ARGV[b + 5]), tonumber(ARGV[b + 6])
    local due = 0
    if at > 0 then due = at elseif delay > 0 then due = now + delay end
    local expires = 0
    if exp_at > 0 then expires = exp_at elseif exp_in > 0 then expires = now + exp_in end
    if expires > 0 then
      redis.call('HSET', key, 'x', expires)
    end
    if due > now then
      redis.call('HSET', key, 'j', ARGV[b + 2], 'a', 0, 'q', now, 's', 'scheduled', 'd', due)
      redis.call('ZADD', KEYS[2], due, id)
      wake_if_first(KEYS[2], ARGV[1], id, due)
    else
      local entry = redis.call('XADD', KEYS[1], '*', 'i', id)
      -- No 'q': the entry id is the enqueue time (start_entry stores it at the first start).
      redis.call('HSET', key, 'j', ARGV[b + 2], 'a', 0, 's', 'queued', 'e', entry)
    end
    created = created + 1
  end
end
if created > 0 then
  redis.call('HINCRBY', KEYS[3], 'enqueued', created)
end
return out
