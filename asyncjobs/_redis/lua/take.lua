-- Read new entries (without blocking) from the streams of one queue's priority levels, in
-- level order, and start them, in one round trip: the busy-queue path. A level is read only
-- when the levels before it had fewer entries waiting than were asked for, so a job starts
-- ahead of every job of a lower level that waits with it (FIFO within a level).
-- Entries read here are this consumer's (no ownership check needed); each is started as
-- start.lua does (one HMGET of its record, one HSET, and an HDEL of a reserved rate slot),
-- and a bad record only gives its own entry a 'corrupt' or 'unreadable' verdict: the rest
-- of the batch starts normally. A job id met twice in one batch is read again by its second
-- entry, after its first one's writes.
--
-- KEYS[1..n] the levels' streams, highest level first (all of one queue: one hash tag)
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] count, ARGV[4..3+n] the levels' job key prefixes
-- Returns {rows, last, errors}: rows holds twelve values per started entry, one after the
-- other (one flat array: Redis converts one table, not one per job): level (1..n), entry
-- id, job id, then start.lua's nine values. When rows is empty, last holds each
-- stream's newest entry id ('0-0' for an empty or missing stream; '' for one that cannot be
-- read): every entry after it is new, so a blocking XREAD from these ids wakes for exactly
-- the entries this call could not see. errors holds {level, message} for each level Redis
-- refused to read (NOGROUP, or a key of the wrong type): the other levels are read as
-- usual, and nothing is written for a refused level (the read is its first command).
local want = tonumber(ARGV[3])
local now = now_ms()
local out, errors = {}, {}
for level = 1, #KEYS do
  if want <= 0 then
    break
  end
  local got = redis.pcall('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', want,
    'STREAMS', KEYS[level], '>')
  if type(got) == 'table' and got.err then
    errors[#errors + 1] = {level, got.err}
  else
    -- Redis replies {{stream, entries}}; fakeredis (the in-memory test server)
    -- {stream, entries}.
    local entries = got and got[1] and (type(got[1]) == 'table' and got[1][2] or got[2])
    if entries then
      local prefix = ARGV[3 + level]
      for _, item in ipairs(entries) do
        local entry, id = item[1], job_id_of(item[2])
        local row = start_entry(entry, id, ARGV[2], prefix, now)
        local n = #out
        out[n + 1], out[n + 2], out[n + 3] = level, entry, id
        for k = 1, 9 do out[n + 3 + k] = row[k] end
        want = want - 1
      end
    end
  end
end
local last = {}
if #out == 0 then
  for level = 1, #KEYS do
    local newest = redis.pcall('XREVRANGE', KEYS[level], '+', '-', 'COUNT', 1)
    if type(newest) == 'table' and newest.err then
      last[level] = ''
    else
      last[level] = newest[1] and newest[1][1] or '0-0'
    end
  end
end
return {out, last, errors}
