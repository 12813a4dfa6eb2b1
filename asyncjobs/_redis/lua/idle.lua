-- Whether some entry of one queue's priority levels has been pending longer than a claim's
-- idle threshold, on this server's clock: the reclaimer's look before it claims (see
-- reclaimer.py, which claims only after a look and soon after it, so that a live worker's
-- refresh queued behind a stalled Redis is applied before any claim). Writes nothing.
-- Reads at most ARGV[3] pending entries in all, in level order, each level from its
-- cursor on (XPENDING's range form without IDLE: with IDLE, one call would walk a whole
-- pending list, however long, while every client waits).
--
-- KEYS[1..n] the levels' streams, highest level first (all of one queue: one hash tag)
-- ARGV[1] group, ARGV[2] min idle ms, ARGV[3] most entries read,
-- ARGV[4..3+n] the levels' cursors ('-': from the start; else a range start to read from)
-- Returns {found, cursors, errors, now}: found is {level (1..n), entry id} for the first
-- entry idle that long, or {} when none was read; each level's next cursor: '-' once its
-- pending list was read to the end (or Redis refused it), the start of what is left to read
-- where the reading stopped, and as given for the levels not read (after a find, or once
-- ARGV[3] entries were read); one {level, message} per level Redis refused (NOGROUP, a key
-- of the wrong type); this server's time (ms).
local LAST_ID = '18446744073709551615-18446744073709551615'  -- no id follows it
local now = now_ms()
local min_idle, budget = tonumber(ARGV[2]), tonumber(ARGV[3])
local cursors, errors = {}, {}
for level = 1, #KEYS do
  cursors[level] = ARGV[3 + level]
end
for level = 1, #KEYS do
  if budget <= 0 then
    break
  end
  local rows = redis.pcall('XPENDING', KEYS[level], ARGV[1], cursors[level], '+', budget)
  if type(rows) == 'table' and rows.err then
    errors[#errors + 1] = {level, rows.err}
    cursors[level] = '-'
  else
    for _, row in ipairs(rows) do
      if tonumber(row[3]) >= min_idle then
        return {{level, row[1]}, cursors, errors, now}
      end
    end
    budget = budget - #rows
    local last = rows[#rows] and rows[#rows][1]
    if budget <= 0 and last and last ~= LAST_ID then
      cursors[level] = '(' .. last
    else
      cursors[level] = '-'
    end
  end
end
return {{}, cursors, errors, now}
