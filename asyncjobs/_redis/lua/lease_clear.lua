-- Read a lease a process failed to take, and remove it if nobody can hold it (a stray key:
-- left or overwritten by hand, by a buggy script, or of the wrong type), so that no stray
-- key keeps a queue without a scheduler until it expires. Every holder (leader.py's Lease)
-- writes a string '<holder>|<32 hex digits>' with an expiry of at most ARGV[1] ms, and
-- renews it to that again; so a key is stray when it
--   - has no expiry,
--   - holds something other than a string, or a string not of that form,
--   - or expires more than ARGV[1] ms from now.
-- A key that is none of these is left alone, whoever holds it: a live holder's lease is
-- never removed (it expires on its own within its TTL if its holder died). The read and the
-- removal are one atomic step: only the value just judged stray is removed.
--
-- KEYS[1] lease key; ARGV[1] the longest TTL a holder sets (ms).
-- Returns {ms until the lease left in place expires (0: there is none, or it was
-- removed), '' or why it was removed: 'no expiry' | 'not a holder's value' |
-- 'an expiry longer than any holder sets'}
local left = redis.call('PTTL', KEYS[1])
if left == -2 then
  return {0, ''}
end
local why = ''
local value = redis.pcall('GET', KEYS[1])
if left == -1 then
  why = 'no expiry'
elseif type(value) ~= 'string' or not string.find(value, '|' .. string.rep('%x', 32) .. '$') then
  why = "not a holder's value"
elseif left > tonumber(ARGV[1]) then
  why = 'an expiry longer than any holder sets'
end
if why ~= '' then
  redis.call('DEL', KEYS[1])
  return {0, why}
end
return {left, ''}
