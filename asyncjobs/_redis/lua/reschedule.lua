-- Put back in its delayed set each job whose record says it is scheduled but whose set has
-- lost it (the set deleted or overwritten by hand, a partial restore...): one step of a SCAN
-- over the job records of a queue's levels, resumed from its cursor. The scheduler reads
-- only the delayed sets, so without this such a job would stay `scheduled` for ever.
--
-- A key is looked at when it starts with one of the levels' job key prefixes (the MATCH
-- pattern may let others through). It is put back when it is a hash whose state is
-- `scheduled` and whose id is not in its level's delayed set, scored with its due time
-- (`d`), or now when that is missing, negative or not a time (promote.lua then checks its
-- expiry as always). Nothing else is written, so no job is ever delayed twice or both delayed and
-- queued: a job already in its set, queued, running or ended is left alone, and a scheduled
-- job has no live stream entry (every script that makes a job scheduled deletes its entry
-- in the same step; an entry left behind is stale for start.lua, which starts only a queued
-- or running record from the entry it names). A job that waited on a concurrency limit
-- (`cw`) comes back at its safety-net due time, not into the limit's wait set: promoted, it
-- meets the limit again. A level whose delayed set holds another type is skipped (promote.lua
-- reports that set). The SCAN's COUNT bounds a step's work.
--
-- KEYS[1..n] the levels' delayed sets
-- ARGV[1] SCAN cursor ('0': a new scan), ARGV[2] MATCH pattern, ARGV[3] COUNT,
-- ARGV[4..3+n] the levels' job key prefixes, in the order of KEYS
-- Returns {the next cursor ('0': the scan is over), jobs put back, the earliest due time
-- (ms) among them (-1: none)}
local found = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', tonumber(ARGV[3]))
local usable = {}  -- level -> whether its delayed set may be written (looked up once)
local now = nil
local put, earliest = 0, -1

local function level_of(key)
  for i = 1, #KEYS do
    local prefix = ARGV[3 + i]
    if #key > #prefix and string.sub(key, 1, #prefix) == prefix then
      return i, string.sub(key, #prefix + 1)
    end
  end
  return nil, nil
end

for _, key in ipairs(found[2]) do
  local level, id = level_of(key)
  local rec = level and hmget(key, 's', 'd')
  if rec and rec[1] == 'scheduled' then
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
return {found[1], put, earliest}
