-- A worker's heartbeat in the worker registry, stamped with the Redis clock (a worker on a
-- host whose clock is off is still seen as alive, and cannot evict the others); entries
-- older than ARGV[2] ms are pruned.
--
-- KEYS[1] workers sorted set
-- ARGV[1] worker name, ARGV[2] prune age ms
-- Returns the Redis time (ms) of the beat.
local now = now_ms()
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
return now
