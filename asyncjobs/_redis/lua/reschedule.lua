-- Put back each job whose record says it waits but that nothing will hand to a worker: one
-- step of a SCAN over the job records of a queue's levels, resumed from its cursor. Such jobs
-- come from Redis edited by hand (a delayed set or stream deleted, trimmed or overwritten, an
-- entry acknowledged by hand, a group moved past its entries, a partial restore); without
-- this they would stay `scheduled`, `queued` or `running` for ever.
--
-- A key is looked at when it starts with one of the levels' job key prefixes (the MATCH
-- pattern may let others through), and only when it is a hash whose state is `scheduled`,
-- `queued` or `running`:
-- - `scheduled`, and its id not in its level's delayed set: put back in the set, scored with
--   its due time (`d`), or now when that is missing, negative or not a time (promote.lua
--   then checks its expiry as always). A job that waited on a concurrency limit (`cw`) comes
--   back at its safety-net due time, not into the limit's wait set: promoted, it meets the
--   limit again.
-- - `queued`, and its entry (`e`) unreachable: not an entry id; not in its level's stream
--   as written (start.lua compares the delivered id with `e` as text, so '01-0' never
--   starts the entry '1-0'); another job's entry; or this job's, but already delivered by
--   the consumer group (at or before the group's last delivered id) and pending for no
--   consumer, so never delivered again. A new entry is added at the stream's end and the
--   record points at it, keeping its enqueue time (`q`, from the old entry id when missing).
--   The job's own old entry, if still in the stream, is deleted (another job's stays). While
--   the group is missing, entries are reachable (a worker makes the group again at id 0 and
--   reads them all). A group moved past the stream's last id (by hand), which would hand out
--   no new entry, is moved back to that id first. A level whose stream refuses the new
--   entry (its last possible id used up) is skipped.
-- - `running`, and its entry unreachable likewise (its worker's pending entry dropped by
--   hand: the group destroyed or made again, the consumer deleted with XGROUP DELCONSUMER,
--   the entry acknowledged, the stream deleted): no reclaim will ever take it over if that
--   worker is gone. Such jobs are only reported ({level, id, worker, attempts, entry}); the
--   caller passes back those two passes found unchanged (ARGV[6+n..]), and each one still
--   running with the same worker, attempts and entry, its entry still unreachable, and
--   untouched for a claim timeout (ARGV[5+n] ms: a live worker keeping such a job stamps
--   its record's `kt` at each keep-alive, touch.lua; without a stamp, its start `st`
--   counts) is put in the stream again the same way, still `running`: the worker handed
--   it starts its next attempt (start.lua runs a running record from the entry it names,
--   as after a group made again, and records the lost attempt as a WorkerLost, as after a
--   reclaim: start_entry's `resumed`).
--   A stamp more than 10 minutes ahead of this server's clock is garbage (ignored); one
--   less far ahead (the clock stepped back) counts as now.
-- Nothing else is written, so no job is ever delayed twice, both delayed and queued, or in
-- the stream twice: a job already in its set, with a reachable entry, running (but as
-- above) or ended is left alone, and a scheduled job has no live stream entry (every script
-- that makes a job scheduled deletes its entry in the same step; an entry left behind is
-- stale for start.lua, which starts only a queued or running record from the entry it
-- names). A level whose
-- delayed set or stream holds another type is skipped for that kind of job (promote.lua and
-- the reads report it). The SCAN's COUNT bounds a step's work.
--
-- KEYS[1..n] the levels' delayed sets, KEYS[n+1..2n] the levels' streams, in one order
-- ARGV[1] SCAN cursor ('0': a new scan; '': no scan, only the running jobs given), ARGV[2]
-- MATCH pattern, ARGV[3] COUNT, ARGV[4..3+n] the levels' job key prefixes, in the order of
-- KEYS, ARGV[4+n] the group, ARGV[5+n] the claim timeout (ms), ARGV[6+n..] running jobs
-- to put back, five values each: level (1..n), job id, worker, attempts, entry (as this
-- script reported them)
-- Returns {the next cursor ('0': the scan is over), scheduled jobs put back, the earliest
-- due time (ms) among them (-1: none), queued jobs put back, the running jobs found
-- orphaned (one {level, id, worker, attempts, entry} each), running jobs put back}
local found = {'0', {}}
if ARGV[1] ~= '' then
  found = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', tonumber(ARGV[3]))
end
local n = #KEYS / 2
local group = ARGV[4 + n]
local usable = {}  -- level -> whether its delayed set may be written (looked up once)
local streams = {}  -- level -> false (not a stream) or the group's last delivered id ('')
local now = nil
local put, earliest, requeued, revived = 0, -1, 0, 0
local orphans = {}

local function level_of(key)
  for i = 1, n do
    local prefix = ARGV[3 + i]
    if #key > #prefix and string.sub(key, 1, #prefix) == prefix then
      return i, string.sub(key, #prefix + 1)
    end
  end
  return nil, nil
end

-- The last id `group` delivered on `stream` ('' when the stream or its group is missing:
-- every entry is reachable then), or false when the key is not a stream. A group moved past
-- the stream's last id (`XGROUP SETID` by hand) would never be handed an entry added now,
-- nor any later: it is moved back to that last id, which no entry lies beyond, so nothing
-- is delivered twice.
local function last_delivered(stream, group)
  local t = redis.call('TYPE', stream)
  t = type(t) == 'table' and t.ok or t
  if t ~= 'stream' then
    return t == 'none' and ''
  end
  local last = group_last_id(stream, group) or ''
  if last == '' then
    return ''
  end
  local ok, about = pcall(redis.call, 'XINFO', 'STREAM', stream)
  if ok then
    local made = nil
    for i = 1, #about, 2 do
      if about[i] == 'last-generated-id' then made = about[i + 1] end
    end
    if made and made ~= last and at_or_before(made, last) then
      redis.call('XGROUP', 'SETID', stream, group, made)
      last = made
    end
  end
  return last
end

-- Whether the group will still hand job `id` its entry `entry` (the record's `e`): the
-- stream holds that entry, written as Redis writes ids (start.lua compares the two as text),
-- for this job, and it is either not delivered yet or pending for a consumer (a reclaim
-- takes it from a dead one). Returns that, and the entry when it is this job's and in the
-- stream (so the caller may delete it), else nil.
local function reachable(stream, group, entry, last, id)
  if not stream_id(entry) then
    return false, nil
  end
  local ok, found = pcall(redis.call, 'XRANGE', stream, entry, entry, 'COUNT', 1)
  if not ok or #found == 0 or job_id_of(found[1][2]) ~= id then
    return false, nil
  end
  if found[1][1] ~= entry then  -- the same entry written otherwise ('01-0'): never started
    return false, found[1][1]
  end
  if last == '' or not at_or_before(entry, last) then
    return true, entry
  end
  local pending
  ok, pending = pcall(redis.call, 'XPENDING', stream, group, entry, entry, 1)
  return not ok or #pending > 0, entry
end

-- The group's last delivered id on level's stream, looked up once per call (see
-- last_delivered); false when the level's stream cannot be used.
local function last_of(level)
  local last = streams[level]
  if last == nil then
    last = last_delivered(KEYS[n + level], group)
    streams[level] = last
  end
  return last
end

-- Add job `id` (record `key`, whose entry is `entry`, enqueue time `q`) to its level's
-- stream again: a new entry, the record pointing at it, its enqueue time kept, and its own
-- old entry (`own`) deleted. False when the stream refuses the entry (its last possible id
-- used up): the level is skipped from then on.
local function put_in_stream(level, key, id, entry, q, own)
  local stream = KEYS[n + level]
  local fresh = redis.pcall('XADD', stream, '*', 'i', id)
  if type(fresh) == 'table' then
    streams[level] = false
    return false
  end
  local change = {'e', fresh}
  if not int(q) then  -- keep its enqueue time: the old entry id was it
    change[3], change[4] = 'q', entry_ms(stream_id(entry) and entry or fresh)
  end
  redis.call('HSET', key, unpack(change))
  if own then
    redis.call('XDEL', stream, own)
  end
  return true
end

for _, key in ipairs(found[2]) do
  local level, id = level_of(key)
  local rec = level and hmget(key, 's', 'd', 'e', 'q', 'w', 'a')
  local state = rec and rec[1]
  if state == 'queued' or state == 'running' then
    local last = last_of(level)
    if last then
      local live, own = reachable(KEYS[n + level], group, rec[3], last, id)
      if not live and state == 'queued' then
        if put_in_stream(level, key, id, rec[3], rec[4], own) then
          requeued = requeued + 1
        end
      elseif not live then  -- reported: put back once two passes found it (see above)
        orphans[#orphans + 1] = {level, id, rec[5] or '', rec[6] or '', rec[3] or ''}
      end
    end
  elseif state == 'scheduled' then
    local delayed = KEYS[level]
    if usable[level] == nil then
      local t = redis.call('TYPE', delayed)
      t = type(t) == 'table' and t.ok or t
      usable[level] = t == 'none' or t == 'zset'
    end
    if usable[level] and not redis.call('ZSCORE', delayed, id) then
      local due = int(rec[2])
      if not due or due < 0 then
        now = now or now_ms()
        due = now
      end
      redis.call('ZADD', delayed, due, id)
      put = put + 1
      if earliest < 0 or due < earliest then
        earliest = due
      end
    end
  end
end

-- The running jobs the caller found orphaned (see the header), checked again: each still
-- running with the same worker, attempts and entry, and its entry still unreachable.
local claim_ms = tonumber(ARGV[5 + n]) or 0

-- Whether a running record, last kept at `kept` (its `kt`) or else started at `started`
-- (`st`), has gone untouched for the claim timeout.
local function untouched(kept, started)
  local seen = int(kept) or int(started) or 0
  now = now or now_ms()
  if seen > now + 600000 then
    seen = int(started) or 0  -- garbage
    if seen > now + 600000 then seen = 0 end
  end
  return now - math.min(seen, now) >= claim_ms
end

for i = 6 + n, #ARGV, 5 do
  local level, id = tonumber(ARGV[i]), ARGV[i + 1]
  local prefix = level and ARGV[3 + level]
  if prefix and level >= 1 and level <= n then
    local key = prefix .. id
    local rec = hmget(key, 's', 'e', 'q', 'w', 'a', 'kt', 'st')
    if rec and rec[1] == 'running' and (rec[4] or '') == ARGV[i + 2]
        and (rec[5] or '') == ARGV[i + 3] and (rec[2] or '') == ARGV[i + 4]
        and untouched(rec[6], rec[7]) then
      local last = last_of(level)
      if last then
        local live, own = reachable(KEYS[n + level], group, rec[2], last, id)
        if not live and put_in_stream(level, key, id, rec[2], rec[3], own) then
          revived = revived + 1
        end
      end
    end
  end
end
return {found[1], put, earliest, requeued, orphans, revived}
