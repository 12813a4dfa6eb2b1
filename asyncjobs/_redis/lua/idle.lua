-- Whether some entry of one queue's priority levels has been pending longer than a claim's
-- idle threshold, on this server's clock: the reclaimer's look before it claims (see
-- reclaimer.py, which claims only after a look and soon after it, so that a live worker's
-- refresh queued behind a stalled Redis is applied before any claim). Writes nothing.
-- XPENDING with IDLE walks the group's pending list: what the consumers hold.
--
-- KEYS[1..n] the levels' streams, highest level first (all of one queue: one hash tag)
-- ARGV[1] group, ARGV[2] min idle ms
-- Returns {found, errors, now}: found is 1 when a level holds such an entry (the levels
-- after it are not looked at), else 0; one {level (1..n), message} per level Redis refused
-- (NOGROUP, a key of the wrong type); this server's time (ms).
local now = now_ms()
local errors = {}
for level = 1, #KEYS do
  local got = redis.pcall('XPENDING', KEYS[level], ARGV[1], 'IDLE', ARGV[2], '-', '+', 1)
  if type(got) == 'table' and got.err then
    errors[#errors + 1] = {level, got.err}
  elseif #got > 0 then
    return {1, errors, now}
  end
end
return {0, errors, now}
