-- Remove a lease key that has no expiry: every holder sets one, so such a key (left by
-- hand, or of the wrong type) is held by nobody and would block every acquire for ever.
-- KEYS[1] lease key. Returns 1 if removed, 0 otherwise.
if redis.call('PTTL', KEYS[1]) == -1 then
  return redis.call('DEL', KEYS[1])
end
return 0
