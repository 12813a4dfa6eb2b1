-- Release a lease only if this holder still owns it (a key of the wrong type is not ours).
-- KEYS[1] lease key; ARGV[1] token. Returns 1 if released, 0 if it was not ours.
if redis.pcall('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
