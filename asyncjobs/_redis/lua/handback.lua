-- Hand entries back at shutdown: each one this consumer still holds (but those whose task
-- still runs in the worker's process) is acknowledged, deleted and added again at the
-- stream's end, so any worker can take it at once instead of waiting for the claim
-- timeout. An attempt this worker had started (the record says it runs here) is not
-- counted against the job's tries. Once the consumer holds nothing it is deleted from the
-- group, in the same step (deleting a consumer drops what it holds, so never earlier).
--
-- A job handed back releases the concurrency lease its attempt held (the record's `cl`),
-- letting the limit's oldest waiter go (release_lease).
--
-- KEYS[1] stream, KEYS[2] delayed set, KEYS[3] concurrency limits hash
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] job key prefix, ARGV[4] most entries to hand
-- back in this call, ARGV[5] concurrency lease set prefix, ARGV[6] (unused) concurrency wait set
-- prefix, ARGV[7..] entry ids to keep (their task still runs in this process)
-- Returns {entries handed back, entries still held that are not kept (call again)}
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local keep, kept = {}, 0
for i = 7, #ARGV do
  keep[ARGV[i]] = true
  kept = kept + 1
end

local function hand_back(entry)
  local found = redis.call('XRANGE', stream, entry, entry)
  local fields = found[1] and found[1][2] or {}
  local id = job_id_of(fields)
  local key = ARGV[3] .. id
  local rec = id ~= '' and hmget(key, 'e', 's', 'w', 'q', 'a', 'cl') or {}
  local live = rec and rec[1] == entry and (rec[2] == 'running' or rec[2] == 'queued')
  redis.call('XACK', stream, group, entry)
  redis.call('XDEL', stream, entry)
  -- A live job goes back; so does an entry without a readable record (a worker
  -- dead-letters it). An entry whose job already ended (e.g. aborted while queued) is
  -- simply dropped.
  if (live or not (rec and rec[2])) and #fields > 0 then
    local fresh = redis.call('XADD', stream, '*', unpack(fields))
    if live then
      local change = {'s', 'queued', 'e', fresh}
      if not int(rec[4]) then  -- never started: keep its enqueue time
        change[#change + 1] = 'q'
        change[#change + 1] = entry_ms(entry)
      end
      local attempts = int(rec[5])
      if rec[2] == 'running' and rec[3] == consumer and attempts and attempts > 0 then
        change[#change + 1] = 'a'
        change[#change + 1] = attempts - 1
      end
      redis.call('HSET', key, unpack(change))
      if rec[2] == 'running' and rec[3] == consumer and rec[6] then
        release_lease(ARGV[5], KEYS[3], ARGV[3], rec[6], id)
      end
    end
  end
end

local count = 0
local rows = redis.call('XPENDING', stream, group, '-', '+', tonumber(ARGV[4]), consumer)
for _, row in ipairs(rows) do
  if not keep[row[1]] then
    hand_back(row[1])
    count = count + 1
  end
end
local left = 0
local rest = redis.call('XPENDING', stream, group, '-', '+', kept + 1, consumer)
for _, row in ipairs(rest) do
  if not keep[row[1]] then left = left + 1 end
end
if #rest == 0 then
  redis.call('XGROUP', 'DELCONSUMER', stream, group, consumer)
end
return {count, left}
