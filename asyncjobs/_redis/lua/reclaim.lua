-- Claim entries that a dead or stalled consumer left idle longer than the claim timeout,
-- on the streams of one queue's priority levels, in one round trip (live workers keep
-- theirs fresh with touch.lua, so a slow job is never taken). Each level is one atomic
-- XAUTOCLAIM from its own cursor: an entry is never held by two consumers, never dropped.
-- Levels are scanned in order while fewer than `count` entries were claimed; a level left
-- unscanned keeps its cursor. A level Redis refuses to scan (NOGROUP, a key of the wrong
-- type) is reported and the others are scanned as usual (nothing is written for it).
--
-- An entry's idle time is counted on this server's clock. If that clock stepped forward
-- (an NTP step), every entry looks idle by the step, those that live workers refresh too.
-- So the caller says how late this server's clock may read at most (ARGV[5], ms: the time
-- it last read here, plus what its own monotonic clock has counted since, plus a margin);
-- a clock past that claims nothing and says so: the caller waits until live workers have
-- refreshed their entries on the new time. '' checks nothing.
--
-- KEYS[1..n] the levels' streams, highest level first (all of one queue: one hash tag)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] min idle ms, ARGV[4] count,
-- ARGV[5] the latest time (ms) this server's clock may read, or '',
-- ARGV[6..5+n] the levels' cursors ('0-0': from the start)
-- Returns {cursors, rows, errors, now, stepped}: each level's next cursor ('0-0' once a
-- scan is complete; its cursor as given when it was not scanned or refused), one
-- {level (1..n), entry id, job id or '', deliveries} per claimed entry, one
-- {level, message} per level refused, this server's time (ms), and 1 when that time was
-- past ARGV[5] (then nothing was scanned: every cursor is as given), else 0.
local now = now_ms()
local latest = tonumber(ARGV[5])
if latest and now > latest then
  local cursors = {}
  for level = 1, #KEYS do
    cursors[level] = ARGV[5 + level]
  end
  return {cursors, {}, {}, now, 1}
end
local want = tonumber(ARGV[4])
local cursors, rows, errors = {}, {}, {}
for level = 1, #KEYS do
  cursors[level] = ARGV[5 + level]
  if want > 0 then
    local claimed = redis.pcall('XAUTOCLAIM', KEYS[level], ARGV[1], ARGV[2], ARGV[3],
      ARGV[5 + level], 'COUNT', want)
    if type(claimed) == 'table' and claimed.err then
      errors[#errors + 1] = {level, claimed.err}
    else
      cursors[level] = claimed[1]
      for _, item in ipairs(claimed[2]) do
        -- Redis 6.2 lists an entry deleted while pending as nil here (7.0 drops it from
        -- the PEL).
        if type(item) == 'table' then
          local entry, id = item[1], job_id_of(item[2])
          local info = redis.call('XPENDING', KEYS[level], ARGV[1], entry, entry, 1)
          local deliveries = info[1] and info[1][4] or 1
          rows[#rows + 1] = {level, entry, id, deliveries}
          want = want - 1
        end
      end
    end
  end
end
return {cursors, rows, errors, now, 0}
