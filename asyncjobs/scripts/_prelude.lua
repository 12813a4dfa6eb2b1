-- Shared prelude, prepended to every script by _scripts.py: the Redis clock, and the
-- steps several scripts take. Every timestamp asyncjobs stores comes from now_ms(), so
-- producers and workers on hosts with skewed clocks still agree on due times, expiry and
-- latency.
local unpack = unpack or table.unpack

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Publish a wake-up for the scheduler when `due` is earlier than every other due time.
local function wake_if_first(delayed, channel, id, due)
  local first = redis.call('ZRANGE', delayed, 0, 0)
  if first[1] == id then
    redis.call('PUBLISH', channel, due)
  end
end

-- End a job: its final state, end time (and result); the record's TTL (0: drop it at once;
-- negative: keep it until purged); a notice to whoever waits for the job.
local function finish(key, channel, state, now, ttl, result)
  if result then
    redis.call('HSET', key, 's', state, 'et', now, 'r', result)
  else
    redis.call('HSET', key, 's', state, 'et', now)
  end
  if ttl > 0 then
    redis.call('EXPIRE', key, ttl)
  elseif ttl == 0 then
    redis.call('DEL', key)
  end
  redis.call('PUBLISH', channel, state)
end

-- True while `entry` is pending for `consumer` (nobody has taken it over).
local function held_by(stream, group, entry, consumer)
  return #redis.call('XPENDING', stream, group, entry, entry, 1, consumer) > 0
end

-- The job id an entry carries in its `i` field ('' if none).
local function job_id_of(fields)
  if type(fields) == 'table' then
    for f = 1, #fields, 2 do
      if fields[f] == 'i' then return fields[f + 1] end
    end
  end
  return ''
end

-- The ms part of a stream entry id ("1795276503766-0" -> 1795276503766), or 0.
local function entry_ms(entry)
  return tonumber(entry and string.match(entry, '^(%d+)') or 0) or 0
end

-- Start one delivered entry (see start.lua): returns {verdict, spec, attempts, history,
-- enqueued ms, now ms}; a runnable job becomes `running` with attempts + 1.
local function start_entry(entry, id, consumer, prefix, now)
  local key = prefix .. id
  local rec = id ~= '' and redis.call('HMGET', key, 's', 'e', 'x', 'ab', 'j', 'a', 'h', 'q') or {}
  local state = rec[1]
  local verdict = 'run'
  if not state then
    verdict = 'missing'
  elseif (state ~= 'queued' and state ~= 'running') or rec[2] ~= entry then
    verdict = 'stale'
  elseif rec[4] then
    verdict = 'aborted'
  elseif rec[3] and now >= tonumber(rec[3]) then
    verdict = 'expired'
  end
  local attempts = tonumber(rec[6] or 0)
  local enqueued = rec[8] or entry_ms(rec[2])
  if verdict == 'run' then
    attempts = attempts + 1
    if rec[8] then
      redis.call('HSET', key, 'a', attempts, 's', 'running', 'st', now, 'w', consumer)
    else  -- keep the enqueue time before the entry id can change (retry, hand-back)
      redis.call('HSET', key, 'a', attempts, 's', 'running', 'st', now, 'w', consumer,
        'q', enqueued)
    end
  end
  return {verdict, rec[5] or '', attempts, rec[7] or '', enqueued, now}
end
