-- Read new entries (without blocking) and start them, in one round trip: the busy-queue
-- path. An empty reply means nothing is waiting; the worker then blocks in XREADGROUP.
-- Entries read here are this consumer's (no ownership check needed); each is started as
-- start.lua does, and a bad record only gives its own entry a 'corrupt' or 'unreadable'
-- verdict: the rest of the batch starts normally.
--
-- KEYS[1] stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] count, ARGV[4] job key prefix
-- Returns one array per entry: {entry id, job id, then start.lua's seven values}
local got = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
  'STREAMS', KEYS[1], '>')
-- Redis replies {{stream, entries}}; fakeredis (the in-memory test server) {stream, entries}.
local entries = got and got[1] and (type(got[1]) == 'table' and got[1][2] or got[2])
if not entries then
  return {}
end
local now = now_ms()
local out = {}
for _, item in ipairs(entries) do
  local entry, id = item[1], job_id_of(item[2])
  local row = start_entry(entry, id, ARGV[2], ARGV[4], now)
  out[#out + 1] = {entry, id, row[1], row[2], row[3], row[4], row[5], row[6], row[7]}
end
return out
