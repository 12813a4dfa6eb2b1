-- Start the attempts of entries just delivered to this consumer (read or reclaimed).
-- A runnable job becomes `running`: attempts + 1, start time and worker recorded.
--
-- KEYS[1] stream
-- ARGV[1] consumer, ARGV[2] job key prefix
-- ARGV[3..] pairs: entry id, job id ('' when the entry carries none)
-- Returns one array per entry: {verdict, spec, attempts, history, enqueued ms, now ms}
--   verdict: 'run' | 'missing' (no record) | 'aborted' (abort requested) | 'expired' |
--   'stale' (the record does not point at this entry, or the job is already final, e.g.
--   aborted while queued: acknowledge, do not run)
local now = now_ms()
local out = {}
for i = 3, #ARGV, 2 do
  local entry, id = ARGV[i], ARGV[i + 1]
  local key = ARGV[2] .. id
  local rec = id ~= '' and redis.call('HMGET', key, 's', 'e', 'x', 'ab', 'j', 'a', 'h', 'q') or {}
  local state = rec[1]
  local verdict = 'run'
  if not state then
    verdict = 'missing'
  elseif (state ~= 'queued' and state ~= 'running') or rec[2] ~= entry then
    verdict = 'stale'
  elseif rec[4] then
    verdict = 'aborted'
  elseif rec[3] and now >= tonumber(rec[3]) then
    verdict = 'expired'
  end
  if verdict == 'run' then
    local attempts = tonumber(rec[6] or 0) + 1
    redis.call('HSET', key, 'a', attempts, 's', 'running', 'st', now, 'w', ARGV[1])
    out[#out + 1] = {verdict, rec[5], attempts, rec[7] or '', rec[8], now}
  else
    out[#out + 1] = {verdict, rec[5] or '', tonumber(rec[6] or 0), rec[7] or '', rec[8] or 0, now}
  end
end
return out
