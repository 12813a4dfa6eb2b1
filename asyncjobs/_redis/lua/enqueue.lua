-- Enqueue a batch of jobs, all or nothing per job: store each record and either XADD it to
-- the stream or ZADD it to the delayed set. A job id whose record exists (queued,
-- scheduled, running, or a kept result, in its own key or a shared hash: see keep) is not
-- enqueued again: the existing job's state is returned instead. (Looked for even for ids
-- just made: redis-py sends a call again when its reply is lost, and by then the job may
-- have run and moved to its shared hash. One EXISTS per tag and call, while the hash is
-- absent; one HEXISTS per job once it exists.) A job that cannot be written (its key
-- holds something other than a
-- hash, or the stream or delayed set is of the wrong type) is not written at all and its
-- reason is returned; the rest of the batch is written.
--
-- Backpressure: when the settings hash holds a `max_length` (digits, from 1 to 10^12), the
-- queue's length -- XLEN of the stream (waiting and running jobs) plus ZCARD of the delayed
-- set -- never goes above it through this script: a new job that finds no room is not
-- written and 'full: <max>' is returned for it; the jobs before it in the batch are in, and
-- once the queue is full the rest of the batch finds no room either. A dedup'd job takes no
-- room. Without a maximum (or with garbage there) nothing is counted: one HGET is the whole
-- cost.
--
-- KEYS[1] stream, KEYS[2] delayed set, KEYS[3] stats hash, KEYS[4] settings hash,
-- KEYS[5..] one job key per job
-- ARGV[1] wake channel
-- ARGV[2] 1 to add refused jobs to the stats' `refused` counter (0: a caller that will try
--         them again, waiting for room)
-- ARGV[3..] six values per job: job id, spec (msgpack), delay ms (0 = none),
--           due at ms (0 = none), expires in ms (0 = none), expires at ms (0 = none)
-- Returns the jobs not created, as a flat list: index (1-based), then their state,
-- 'full: <max>' for a job refused for want of room, or 'error: <reason>' for a job that
-- could not be written (empty when every job was new, the usual case: a small reply for a
-- large batch).
local function size(cmd, key)  -- a wrong-typed key counts 0 (its writes fail on their own)
  local n = redis.pcall(cmd, key)
  return type(n) == 'number' and n or 0
end

local now = now_ms()
local tags = {}  -- kept_exists()'s cache: shared hashes known absent in this call
local out = {}
local created, refused = 0, 0
-- Only digits, from 1 to 10^12: exactly what every reader of it shows (values.max_length
-- in Python), so that a value written by hand ('1e1', '0x0a', ' 10', '10.0') is no maximum
-- for anyone rather than one that is enforced but never shown.
local raw_max = redis.pcall('HGET', KEYS[4], 'max_length')
local max = type(raw_max) == 'string' and string.match(raw_max, '^%d+$') and tonumber(raw_max)
local room = nil
if max and max > 0 and max <= 1e12 then
  room = max - size('XLEN', KEYS[1]) - size('ZCARD', KEYS[2])
end
for i = 1, #KEYS - 4 do
  local key = KEYS[4 + i]
  local b = 2 + (i - 1) * 6
  local id = ARGV[b + 1]
  local rec = hmget(key, 's')
  if not rec then
    out[#out + 1] = i
    out[#out + 1] = 'error: its key ' .. key .. ' holds something other than a hash'
  elseif rec[1] then
    out[#out + 1] = i
    out[#out + 1] = rec[1]
  elseif kept_exists(key, id, tags) then
    out[#out + 1] = i
    out[#out + 1] = 'complete'
  elseif room and room <= 0 then
    out[#out + 1] = i
    out[#out + 1] = 'full: ' .. string.format('%d', max)
    refused = refused + 1
  else
    local delay, at = tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
    local exp_in, exp_at = tonumber(ARGV[b + 5]), tonumber(ARGV[b + 6])
    local due = 0
    if at > 0 then due = at elseif delay > 0 then due = now + delay end
    local expires = 0
    if exp_at > 0 then expires = exp_at elseif exp_in > 0 then expires = now + exp_in end
    local fields, placed
    if due > now then
      placed = redis.pcall('ZADD', KEYS[2], due, id)
      fields = {'j', ARGV[b + 2], 'a', 0, 'q', now, 's', 'scheduled', 'd', due}
    else
      placed = redis.pcall('XADD', KEYS[1], '*', 'i', id)
      -- No 'q': the entry id is the enqueue time (start_entry stores it at the first start).
      fields = {'j', ARGV[b + 2], 'a', 0, 's', 'queued', 'e', placed}
    end
    if type(placed) == 'table' and placed.err then
      out[#out + 1] = i
      out[#out + 1] = 'error: ' .. tostring(placed.err)
    else
      if expires > 0 then
        fields[#fields + 1] = 'x'
        fields[#fields + 1] = expires
      end
      redis.call('HSET', key, unpack(fields))
      if due > now then
        wake_if_first(KEYS[2], ARGV[1], id, due)
      end
      created = created + 1
      if room then room = room - 1 end
    end
  end
end
count(KEYS[3], 'enqueued', created)
if ARGV[2] == '1' then count(KEYS[3], 'refused', refused) end
return out
