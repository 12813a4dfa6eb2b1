-- A worker's heartbeat: its record (JSON, expiring) and its entry in the worker registry,
-- stamped with the Redis clock (a worker on a host whose clock is off is still seen as
-- alive, and cannot evict the others); entries older than ARGV[2] ms are pruned. The prunes
-- come first: on a Redis at its maxmemory a script may write once it has written, and a
-- ZREMRANGEBYSCORE is allowed there, so a worker draining a full Redis still heartbeats.
--
-- It also declares the worker's claim timeout and returns the largest and the smallest one
-- a live worker of the prefix declares: a worker takes over an entry only once it has been
-- idle for half the largest (see reclaimer.py), and refreshes the entries it holds every
-- sixth of the smallest (upkeep.py), so a fleet whose workers have different claim
-- timeouts (a deploy that changes it) never takes a job from a live worker, even while one
-- of them has not heard of the other yet. The declarations are a sorted set of claim
-- timeouts (ms, as members), each scored with the time its latest declaration lapses (the
-- record's TTL after the beat); lapsed ones are pruned, and so are those lapsing more than
-- 10 minutes ahead (written by hand, or under a clock that has since stepped back).
-- Garbage in that key is replaced; a member that is not a claim timeout (digits, 1 s to
-- 1 h) is ignored. A registry key of another type (written by hand, or by another program)
-- is replaced too: it holds nothing but heartbeats, which every live worker writes again
-- within one beat.
--
-- KEYS[1] workers sorted set, KEYS[2] the worker's record key, KEYS[3] the declared claim
-- timeouts (the same slot as KEYS[1])
-- ARGV[1] worker name, ARGV[2] prune age ms, ARGV[3] record (JSON), ARGV[4] its TTL s,
-- ARGV[5] the worker's claim timeout ms
-- Returns {the Redis time (ms) of the beat, the largest and the smallest claim timeout (ms)
-- declared by a worker whose declaration has not lapsed, this one's included}.
local now = now_ms()
local registry = redis.call('TYPE', KEYS[1])
registry = type(registry) == 'table' and registry.ok or registry
if registry ~= 'zset' and registry ~= 'none' then
  redis.call('DEL', KEYS[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
local kind = redis.call('TYPE', KEYS[3])
kind = type(kind) == 'table' and kind.ok or kind
if kind == 'zset' then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '(' .. digits(now + 600000), '+inf')
elseif kind ~= 'none' then
  redis.call('DEL', KEYS[3])
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('SET', KEYS[2], ARGV[3], 'EX', tonumber(ARGV[4]))
local lapses = now + tonumber(ARGV[4]) * 1000
local held, most, least = nil, tonumber(ARGV[5]), tonumber(ARGV[5])
local declared = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
for i = 1, #declared, 2 do
  if declared[i] == ARGV[5] then
    held = tonumber(declared[i + 1])
  end
  local ms = string.match(declared[i], '^%d+$') and tonumber(declared[i])
  if ms and ms >= 1000 and ms <= 3600000 then
    most, least = math.max(most, ms), math.min(least, ms)
  end
end
if not held or held < lapses then  -- a longer-lived declaration of the same one stays
  redis.call('ZADD', KEYS[3], lapses, ARGV[5])
end
return {now, most, least}
