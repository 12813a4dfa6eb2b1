-- Acquire concurrency-limit leases for started jobs (see asyncjobs/_limits.py, `acquire`):
-- a limit is a sorted set of leases, job id -> lease expiry (ms, Redis clock). Expired
-- leases are dropped first (their worker died: the slot comes back within the claim
-- timeout). A job that already holds a lease (delivered again) renews it and runs; one
-- that finds fewer than N leases takes one and runs. When the set is full, leases that
-- no worker could have written are dropped (expiring more than MAX_LEASE_MS from now: the
-- longest claim timeout is an hour), then the 20 holders whose leases expire first are
-- checked (each record must say it runs under this limit) and leases nothing backs are
-- dropped; any others lapse within the claim timeout. Any other job waits: its entry is
-- acknowledged and deleted, its record goes
-- back to `scheduled` with its attempt count as before start.lua counted this attempt and
-- `cw` = the limit's name (what it waits on), it enters the delayed set at its safety-net
-- due time (the earliest lease expiry, or its own expiry if sooner) and the limit's wait
-- set (oldest first: a release lets the oldest go at once, see release_lease). A lease or
-- wait key of the wrong type holds no lease: it is deleted (repaired) and counted as
-- `concurrency_repaired`. Only the worker holding the entry may decide: an entry taken
-- over meanwhile is left to its new owner; a job whose abort was requested is not made to
-- wait (the worker ends it). Jobs of one call are decided in order.
--
--
-- Leases expire on the server's clock, so a step of that clock forward (an NTP step) would
-- make the leases of running jobs look expired and let more than N run. ARGV[6] is the
-- latest time the clock may read (the worker's forecast from its previous call, see
-- limiter.LeaseChecks; '' checks nothing): a clock past it drops no lease for its expiry
-- in this call (a lease nothing backs, or written too far ahead, is still dropped), and a
-- job that waits is looked at again one lease period on at the earliest (a release lets it
-- go sooner), not at once for a lease that only looks expired.
--
-- KEYS[1] stream, KEYS[2] delayed set, KEYS[3] stats hash, KEYS[4] limits hash (name -> N)
-- KEYS[5..] triples: lease set (one for every priority level of the queue), wait set (the
--   job's level's), job key
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] wake channel, ARGV[4] lease ms,
-- ARGV[5] job key prefix, ARGV[6] latest ms the clock may read ('' no check)
-- ARGV[7..] quads: entry id, job id, N, limit name
-- Returns one {verdict, due ms} per job, then the time (ms), then 1 if the clock was past
--   ARGV[6] (else 0); verdict: 'run' (lease held until due ms) | 'waiting' (until a release,
--   at the latest due ms) | 'lost' (not this consumer's entry, or no longer this entry's
--   running job: leave it) | 'aborted'
check_type(KEYS[2], 'zset')
local now = now_ms()
local lease_ms = tonumber(ARGV[4])
local stepped = ARGV[6] ~= '' and now > (tonumber(ARGV[6]) or 0)
local out = {}
local waited, repaired = 0, 0

-- Delete a limit key of the wrong type (it holds no lease): counted, never raised.
local function repair(key)
  local t = redis.call('TYPE', key)
  t = type(t) == 'table' and t.ok or t
  if t ~= 'none' and t ~= 'zset' then
    redis.call('DEL', key)
    repaired = repaired + 1
  end
end

-- Drop the expired leases (repairing a lease set of the wrong type).
local function clear_expired(leases)
  local gone = redis.pcall('ZREMRANGEBYSCORE', leases, '-inf', now)
  if type(gone) == 'table' and gone.err then
    repair(leases)
  end
end

local MAX_LEASE_MS = 3600 * 1000

-- Drop the leases no worker wrote (too far ahead), then those of the first 20 holders that
-- no running job of this limit backs (a record gone, ended, or moved on).
local function drop_unbacked(leases, name)
  repaired = repaired + redis.call('ZREMRANGEBYSCORE', leases,
    '(' .. string.format('%.0f', now + MAX_LEASE_MS), '+inf')
  for _, holder in ipairs(redis.call('ZRANGE', leases, 0, 19)) do
    -- the holder may be a job of any priority level of the queue (one lease set for all)
    local rec = nil
    for _, base in ipairs(level_bases(shared_base(leases, ':conc:' .. name))) do
      local found = hmget(base .. ':job:' .. holder, 's', 'cl')
      if found and found[1] then
        rec = found
        break
      end
    end
    if not rec or rec[1] ~= 'running' or rec[2] ~= name then
      redis.call('ZREM', leases, holder)
      repaired = repaired + 1
    end
  end
end

-- The job takes (or renews) its lease. `had_waited`: it waited on a limit before (its `cw`);
-- `first`: the limit held no lease (it enters the limits hash Admin lists).
local function take(leases, waiters, key, id, n, name, had_waited, first)
  redis.call('ZADD', leases, now + lease_ms, id)
  redis.call('HSET', key, 'cl', name)
  if had_waited then
    redis.call('HDEL', key, 'cw')
    redis.pcall('ZREM', waiters, id)
  end
  if first then
    redis.pcall('HSET', KEYS[4], name, n)
  end
  return {'run', now + lease_ms}
end

local function check(leases, waiters, key, entry, id, n, name)
  if not held_by(KEYS[1], ARGV[1], entry, ARGV[2]) then
    return {'lost', 0}
  end
  local rec = hmget(key, 's', 'e', 'ab', 'x', 'a', 'cw')
  if not rec or rec[1] ~= 'running' or rec[2] ~= entry then
    return {'lost', 0}
  end
  if rec[3] then
    return {'aborted', 0}
  end
  local had_waited = rec[6] and true or false
  if not stepped then
    clear_expired(leases)
  end
  local held = redis.call('ZCARD', leases)
  if held < n or redis.call('ZSCORE', leases, id) then
    return take(leases, waiters, key, id, n, name, had_waited, held == 0)
  end
  drop_unbacked(leases, name)
  if redis.call('ZCARD', leases) < n then
    return take(leases, waiters, key, id, n, name, had_waited, false)
  end
  local first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
  local due = math.max(tonumber(first[2]), now)
  if stepped then
    due = math.max(due, now + lease_ms)
  end
  local expires = int(rec[4])
  if expires and expires < due then
    due = math.max(expires, now)
  end
  defer_to(KEYS[1], ARGV[1], entry, key, int(rec[5]) or 1, KEYS[2], ARGV[3], id, due,
    'cw', name)
  repair(waiters)
  redis.call('ZADD', waiters, 'NX', now, id)
  redis.pcall('HSET', KEYS[4], name, n)
  waited = waited + 1
  return {'waiting', due}
end

for i = 7, #ARGV, 4 do
  local k = 5 + (i - 7) / 4 * 3
  out[#out + 1] = check(KEYS[k], KEYS[k + 1], KEYS[k + 2], ARGV[i], ARGV[i + 1],
    tonumber(ARGV[i + 2]), ARGV[i + 3])
end
count(KEYS[3], 'concurrency_waited', waited)
count(KEYS[3], 'concurrency_repaired', repaired)
out[#out + 1] = now
out[#out + 1] = stepped and 1 or 0
return out
