-- Renew a lease only if this holder still owns it (a key of the wrong type is not ours).
-- KEYS[1] lease key; ARGV[1] token, ARGV[2] TTL ms. Returns 1 if renewed, 0 if lost.
if redis.pcall('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
