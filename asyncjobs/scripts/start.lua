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
  out[#out + 1] = start_entry(ARGV[i], ARGV[i + 1], ARGV[1], ARGV[2], now)
end
return out
