-- Create a queue's stream and consumer group (at id 0, so nothing queued is skipped), also
-- on a Redis at its maxmemory: there XGROUP CREATE is refused, unless the script has already
-- written, so a harmless write comes first (an expiry on a key that never exists).
--
-- KEYS[1] stream
-- ARGV[1] group
-- Returns 1 if the group was created, 0 if it existed.
redis.call('PEXPIRE', KEYS[1] .. ':never', 1)
local ok = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if type(ok) == 'table' and ok.err then
  if string.find(tostring(ok.err), 'BUSYGROUP', 1, true) then
    return 0
  end
  error(tostring(ok.err))
end
return 1
