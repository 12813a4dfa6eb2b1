-- Keep this consumer's in-flight entries fresh (reset their idle time without counting a
-- delivery), and report entries it lost and jobs whose abort was requested. Which entries
-- are still this consumer's is one XPENDING over their range, not one per entry. An entry
-- pending for nobody whose job's record says it runs on that entry (an orphan: the stream
-- was deleted or trimmed, the group destroyed; see `orphans`) is not lost: its attempt
-- goes on here, and settle.lua records it. Having no entry to refresh, its record is
-- stamped instead (`kt`, this server's time in ms): reschedule.lua puts back a running job
-- with no reclaimable entry only once that stamp (or its start) is a claim timeout old. No
-- group at all: nothing is held.
--
-- The concurrency lease of each job still held (the record's `cl`, see concurrency.lua)
-- is renewed to now + ARGV[5] ms; a lease that is gone (expired and dropped) is not
-- taken again here.
--
-- KEYS[1] stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] job key prefix, ARGV[4] concurrency lease set
-- prefix, ARGV[5] lease ms
-- ARGV[6..] pairs: entry id, job id
-- Returns {{lost entry ids...}, {job ids to abort...}}
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local entries = {}
for i = 6, #ARGV, 2 do entries[#entries + 1] = ARGV[i] end
local held = held_set(stream, group, consumer, entries, #entries * 4 + 1000)
local orphan = orphans(stream, group, held, 6, 2, ARGV[3])
local owned, lost, aborted = {}, {}, {}
local until_ms = nil
for i = 6, #ARGV, 2 do
  local entry, id = ARGV[i], ARGV[i + 1]
  if not held[entry] and not orphan[entry] then
    lost[#lost + 1] = entry
  else
    if held[entry] then
      owned[#owned + 1] = entry
    elseif id ~= '' then
      redis.pcall('HSET', ARGV[3] .. id, 'kt', now_ms())
    end
    local rec = id ~= '' and hmget(ARGV[3] .. id, 'ab', 'cl')
    if rec and rec[1] then
      aborted[#aborted + 1] = id
    end
    if rec and rec[2] then
      until_ms = until_ms or now_ms() + tonumber(ARGV[5])
      redis.pcall('ZADD', ARGV[4] .. rec[2], 'XX', until_ms, id)
    end
  end
end
-- XCLAIM with min-idle 0 resets the idle time; JUSTID leaves the delivery counter alone.
for first = 1, #owned, 500 do
  local args = {stream, group, consumer, 0}
  for j = first, math.min(first + 499, #owned) do args[#args + 1] = owned[j] end
  args[#args + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(args))
end
return {lost, aborted}
