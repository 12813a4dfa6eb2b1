-- Start the attempts of entries just delivered to this consumer (by a blocking read or a
-- reclaim). A runnable job becomes `running`: attempts + 1, start time and worker recorded.
-- An entry that is no longer pending for this consumer (another worker reclaimed it between
-- the read and this call) is not touched: its new owner starts it.
--
-- KEYS[1] stream
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] job key prefix
-- ARGV[4..] pairs: entry id, job id ('' when the entry carries none)
-- Returns one array per entry: {verdict, spec or reason, attempts, history, enqueued ms, now ms,
--   reserved slot ms (0: none; a slot rate.lua gave the job, handed back once), plain (1: a
--   job that runs with a plain record, see keep in the prelude; else 0), resumed (1: the
--   record said `running` already, an earlier attempt was lost; see start_entry)}
--   verdict: 'run' | 'lost' (not this consumer's any more: leave it) | 'missing' (no
--   record) | 'unreadable' (the job key is not a hash) | 'corrupt' (a field cannot be read;
--   the reason is in the second value) | 'aborted' (abort requested) | 'expired' |
--   'stale' (the record does not point at this entry, or the job is already final, e.g.
--   aborted while queued: acknowledge, do not run)
local now = now_ms()
local out = {}
local held = {}
for i = 4, #ARGV, 2 do
  held[i] = held_by(KEYS[1], ARGV[1], ARGV[i], ARGV[2])
end
-- Refresh the entries about to start (their idle time counts from now). This write comes
-- first on purpose: on a Redis at its maxmemory a script may go on writing once it has
-- written, and XCLAIM is allowed there, so jobs still start and a full Redis drains.
local mine = {KEYS[1], ARGV[1], ARGV[2], 0}
for i = 4, #ARGV, 2 do
  if held[i] then mine[#mine + 1] = ARGV[i] end
end
if #mine > 4 then
  mine[#mine + 1] = 'JUSTID'
  redis.call('XCLAIM', unpack(mine))
end
for i = 4, #ARGV, 2 do
  if held[i] then
    out[#out + 1] = start_entry(ARGV[i], ARGV[i + 1], ARGV[2], ARGV[3], now)
  else
    out[#out + 1] = {'lost', '', 0, '', 0, now, 0, 0, 0}
  end
end
return out
