-- A worker's heartbeat: its record (JSON, expiring) and its entry in the worker registry,
-- stamped with the Redis clock (a worker on a host whose clock is off is still seen as
-- alive, and cannot evict the others); entries older than ARGV[2] ms are pruned. The prune
-- comes first: on a Redis at its maxmemory a script may write once it has written, and a
-- ZREMRANGEBYSCORE is allowed there, so a worker draining a full Redis still heartbeats.
--
-- KEYS[1] workers sorted set, KEYS[2] the worker's record key
-- ARGV[1] worker name, ARGV[2] prune age ms, ARGV[3] record (JSON), ARGV[4] its TTL s
-- Returns the Redis time (ms) of the beat.
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('SET', KEYS[2], ARGV[3], 'EX', tonumber(ARGV[4]))
return now
