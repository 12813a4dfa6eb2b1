-- Check started jobs against their tasks' shared rate limits (GCRA without burst, see
-- asyncjobs/_limits.py): a limit's key holds the theoretical arrival time (TAT, µs on the
-- Redis clock), the earliest time the next job may start. A job whose slot is now (or at
-- most 1 ms away: _limits.TOLERANCE_US) runs; any other gets the next free slot (reserved
-- for it: the TAT moves on by one interval) and waits for it in the delayed set,
-- `scheduled`, with its attempt count back where it was before start.lua counted this
-- attempt, and the slot noted as `rs` (start.lua hands it back at the next start, so the
-- job then runs without coming here again). A job whose expiry comes before its slot is
-- not given one: it ends expired (the worker settles it). Only the worker holding the
-- entry may decide: an entry taken over meanwhile is left to its new owner; a job whose
-- abort was requested is not deferred (the worker ends it).
-- Jobs of one call are decided in order, so two of them under one limit get two slots.
--
-- KEYS[1] stream, KEYS[2] delayed set, KEYS[3] stats hash,
-- KEYS[4..] pairs: limit key, job key
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] wake channel,
-- ARGV[4..] triples: entry id, job id, interval µs
-- Returns one {verdict, slot ms} per job, then the time (ms); verdict: 'run' |
--   'deferred' (until the slot) | 'lost' (not this consumer's entry, or no longer this
--   entry's running job: leave it) | 'aborted' | 'expired'
check_type(KEYS[2], 'zset')
local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now = math.floor(now_us / 1000)
local out = {}
local deferred = 0
local TOLERANCE_US = 1000

-- The TATs this call wrote, by limit key: a later job of the same limit in this call reads
-- it here (no other writer runs meanwhile), not from Redis again.
local written = {}

-- The limit key is ours alone, and keep() always writes it with a TTL that ends just after
-- the TAT it holds: anything unreadable there, and a TAT that no such TTL backs (no TTL, or
-- one that ends before it: a value written by hand, say a year ahead), counts as no TAT
-- (SET replaces it). Never a limit wedged for as long as a stray value says.
local TTL_SLACK_US = 50000
local function tat_of(limit)
  if written[limit] then
    return math.max(written[limit], now_us)
  end
  local stored = redis.pcall('GET', limit)
  local tat = type(stored) == 'string' and tonumber(stored) or nil
  if not tat or tat ~= tat or tat < now_us or tat > now_us + 1e15 then
    return now_us
  end
  if tat > now_us + TOLERANCE_US then
    local left = redis.pcall('PTTL', limit)
    if type(left) ~= 'number' or left < 0 or tat > now_us + left * 1000 + TTL_SLACK_US then
      return now_us
    end
  end
  return tat
end

local function keep(limit, until_us)
  redis.call('SET', limit, string.format('%.0f', until_us), 'PX',
    math.floor((until_us - now_us) / 1000) + 1)
  written[limit] = until_us
end

local function check(limit, key, entry, id, interval)
  if not held_by(KEYS[1], ARGV[1], entry, ARGV[2]) then
    return {'lost', 0}
  end
  local rec = hmget(key, 's', 'e', 'ab', 'x', 'a')
  if not rec or rec[1] ~= 'running' or rec[2] ~= entry then
    return {'lost', 0}
  end
  if rec[3] then
    return {'aborted', 0}
  end
  local tat = tat_of(limit)
  if tat - now_us <= TOLERANCE_US then
    keep(limit, tat + interval)
    return {'run', now}
  end
  local slot = math.ceil(tat / 1000)
  local expires = int(rec[4])
  if expires and slot >= expires then
    return {'expired', slot}
  end
  keep(limit, tat + interval)
  defer_to(KEYS[1], ARGV[1], entry, key, int(rec[5]) or 1, KEYS[2], ARGV[3], id, slot,
    'rs', slot)
  deferred = deferred + 1
  return {'deferred', slot}
end

for i = 4, #ARGV, 3 do
  local k = 4 + (i - 4) / 3 * 2
  out[#out + 1] = check(KEYS[k], KEYS[k + 1], ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]))
end
count(KEYS[3], 'rate_limited', deferred)
out[#out + 1] = now
return out
