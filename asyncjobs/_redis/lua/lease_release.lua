-- Release a lease only if this holder still owns it (a key of the wrong type is not ours),
-- and say so on a channel when one is given (the processes waiting for the lease take it
-- at once instead of when it would have expired).
-- KEYS[1] lease key; ARGV[1] token, ARGV[2] channel ('' for none), ARGV[3] message.
-- Returns 1 if released, 0 if it was not ours.
if redis.pcall('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if ARGV[2] and ARGV[2] ~= '' then
    redis.call(PUBLISH, ARGV[2], ARGV[3])
  end
  return 1
end
return 0
