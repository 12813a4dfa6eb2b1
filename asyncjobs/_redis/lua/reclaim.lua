-- Claim entries that a dead or stalled consumer left idle longer than the claim timeout
-- (live workers keep theirs fresh with touch.lua, so a slow job is never taken).
-- One atomic XAUTOCLAIM: an entry is never held by two consumers, never dropped.
--
-- KEYS[1] stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] min idle ms, ARGV[4] count, ARGV[5] cursor
-- Returns {next cursor, {{entry id, job id or '', deliveries}, ...}}
local claimed = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[5],
  'COUNT', ARGV[4])
local out = {}
for _, item in ipairs(claimed[2]) do
  -- Redis 6.2 lists an entry deleted while pending as nil here (7.0 drops it from the PEL).
  if type(item) == 'table' then
    local entry, id = item[1], job_id_of(item[2])
    local info = redis.call('XPENDING', KEYS[1], ARGV[1], entry, entry, 1)
    local deliveries = info[1] and info[1][4] or 1
    out[#out + 1] = {entry, id, deliveries}
  end
end
return {claimed[1], out}
