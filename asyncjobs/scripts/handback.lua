-- Hand entries back at shutdown: each one this consumer still holds is acknowledged,
-- deleted and added again at the stream's end, so any worker can take it at once instead
-- of waiting for the claim timeout. An attempt this worker had started (the record says it
-- runs here) is not counted against the job's tries.
--
-- KEYS[1] stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] job key prefix, ARGV[4..] entry ids
-- Returns the number of entries handed back.
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local count = 0
for i = 4, #ARGV do
  local entry = ARGV[i]
  if held_by(stream, group, entry, consumer) then
    local found = redis.call('XRANGE', stream, entry, entry)
    local fields = found[1] and found[1][2] or {}
    local id = job_id_of(fields)
    local key = ARGV[3] .. id
    local rec = id ~= '' and redis.call('HMGET', key, 'e', 's', 'w', 'q') or {}
    local live = rec[1] == entry and (rec[2] == 'running' or rec[2] == 'queued')
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
    -- A live job goes back; so does an entry without a record (a worker dead-letters it).
    -- An entry whose job already ended (e.g. aborted while queued) is simply dropped.
    if (live or not rec[2]) and #fields > 0 then
      local fresh = redis.call('XADD', stream, '*', unpack(fields))
      if live then
        if not rec[4] then  -- never started: keep its enqueue time
          redis.call('HSET', key, 'q', entry_ms(entry))
        end
        redis.call('HSET', key, 's', 'queued', 'e', fresh)
        if rec[2] == 'running' and rec[3] == consumer then
          redis.call('HINCRBY', key, 'a', -1)
        end
      end
    end
    count = count + 1
  end
end
return count
