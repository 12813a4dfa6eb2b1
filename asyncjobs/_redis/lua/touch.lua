-- Keep this consumer's in-flight entries fresh (reset their idle time without counting a
-- delivery), and report entries it lost and jobs whose abort was requested. Which entries
-- are still this consumer's is one XPENDING over their range, not one per entry.
--
-- KEYS[1] stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] job key prefix
-- ARGV[4..] pairs: entry id, job id
-- Returns {{lost entry ids...}, {job ids to abort...}}
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local entries = {}
for i = 4, #ARGV, 2 do entries[#entries + 1] = ARGV[i] end
local held = held_set(stream, group, consumer, entries, #entries * 4 + 1000)
local owned, lost, aborted = {}, {}, {}
for i = 4, #ARGV, 2 do
  local entry, id = ARGV[i], ARGV[i + 1]
  if not held[entry] then
    lost[#lost + 1] = entry
  else
    owned[#owned + 1] = entry
    local rec = id ~= '' and hmget(ARGV[3] .. id, 'ab')
    if rec and rec[1] then
      aborted[#aborted + 1] = id
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
