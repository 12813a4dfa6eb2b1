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
  local entry, fields = item[1], item[2]
  local id = ''
  if type(fields) == 'table' then
    for f = 1, #fields, 2 do
      if fields[f] == 'i' then id = fields[f + 1] end
    end
  end
  local info = redis.call('XPENDING', KEYS[1], ARGV[1], entry, entry, 1)
  local deliveries = info[1] and info[1][4] or 1
  out[#out + 1] = {entry, id, deliveries}
end
return {claimed[1], out}
