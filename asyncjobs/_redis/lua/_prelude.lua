-- Shared prelude, prepended to every script by _scripts.py: the Redis clock, and the
-- steps several scripts take. Every timestamp asyncjobs stores comes from now_ms(), so
-- producers and workers on hosts with skewed clocks still agree on due times, expiry and
-- latency.
--
-- Anything read from Redis may be garbage (a key of the wrong type, a field that is not a
-- number): scripts read through hmget() and int(), which never raise, and check every
-- queue-level key's type with check_type() before their first write, so that a script
-- either writes nothing or finishes what it started. A bad job is isolated (dead-lettered
-- with the reason) and never stops the rest of a batch.
local unpack = unpack or table.unpack

-- The command every notice is published with: scripts.py loads each script a second time
-- with 'SPUBLISH' here, for a Redis Cluster that uses sharded pub/sub (see pubsub.py).
local PUBLISH = 'PUBLISH'

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- A whole number below 2^53 in magnitude (a time in ms, attempts) as the text Redis stores
-- for it: the same digits a number passed to redis.call becomes, without the float
-- formatting Redis does for one ('%.17g', costly for a 13-digit time). '%d' takes a C long,
-- 32 bits on some platforms: a number of 10 digits or more is written as two parts below
-- 10^9.
local function digits(n)
  if n < 0 then
    return '-' .. digits(-n)
  end
  if n < 1e9 then
    return string.format('%d', n)
  end
  local high = math.floor(n / 1e9)
  local low = n - high * 1e9
  if low < 0 then  -- the division rounded up (only near 2^53)
    high, low = high - 1, low + 1e9
  elseif low >= 1e9 then
    high, low = high + 1, low - 1e9
  end
  return string.format('%d%09d', high, low)
end

-- digits() of a time, remembering the last one: a batch writes the same `now` many times.
local last_ms, last_ms_text = nil, nil
local function ms_text(n)
  if n ~= last_ms then
    last_ms, last_ms_text = n, digits(n)
  end
  return last_ms_text
end

-- A whole number (attempts, a time in ms) from a field; nil when missing or garbage
-- ('abc', 'inf', 'nan', '1.5', absurdly large).
local function int(v)
  local n = tonumber(v)
  if n and n == n and n > -1e15 and n < 1e15 and n == math.floor(n) then
    return n + 0.0 == 0 and 0 or n  -- '-0' reads as 0
  end
  return nil
end

-- HMGET that never raises: nil when the key holds something other than a hash.
local function hmget(key, ...)
  local r = redis.pcall('HMGET', key, ...)
  if type(r) == 'table' and r.err then
    return nil
  end
  return r
end

-- Raise (before any write) unless `key` is absent or of type `want`.
local function check_type(key, want)
  local t = redis.call('TYPE', key)
  t = type(t) == 'table' and t.ok or t
  if t ~= 'none' and t ~= want then
    error('ASYNCJOBS_CORRUPT key ' .. key .. ' holds a ' .. t .. ', not a ' .. want ..
      ': delete or rename it')
  end
end

-- Counters are best effort: a broken stats key never stops a job.
local function count(stats, field, n)
  if n > 0 then
    redis.pcall('HINCRBY', stats, field, n)
  end
end

-- Add outcome counts to the current minute's counters (kept two hours: the dashboard's
-- charts). Best effort, like every counter.
local function count_minute(prefix, now, counts)
  local key = prefix .. math.floor(now / 60000)
  local any = false
  for outcome, n in pairs(counts) do
    redis.pcall('HINCRBY', key, outcome, n)
    any = true
  end
  if any then
    redis.pcall('EXPIRE', key, 7200)
  end
end

-- Publish a wake-up for the scheduler when `due` is earlier than every other due time.
local function wake_if_first(delayed, channel, id, due)
  local first = redis.call('ZRANGE', delayed, 0, 0)
  if first[1] == id then
    redis.call(PUBLISH, channel, due)
  end
end

-- End a job: its final state and end time, plus `fields` (a list of field, value: the
-- result, the error history...); the record's TTL (0: drop it at once; negative: keep it
-- until purged); a notice to whoever waits (unless `quiet`: nobody does). Returns nil, or
-- an error text when the job key cannot hold a record (then nothing was written).
local function finish(key, channel, state, now, ttl, fields, quiet)
  local ok = redis.pcall('HSET', key, 's', state, 'et', ms_text(now), unpack(fields or {}))
  if type(ok) == 'table' and ok.err then
    return 'the job key cannot hold a record: ' .. tostring(ok.err)
  end
  if ttl > 0 then
    redis.call('EXPIRE', key, ttl)
  elseif ttl == 0 then
    redis.call('DEL', key)
  else
    redis.call('PERSIST', key)
  end
  if not quiet then
    redis.call(PUBLISH, channel, state)
  end
  return nil
end

-- Kept results (asyncjobs/_redis/kept.py has the rules and the format): the hash that may
-- keep the result of job `id` whose own key is `key` ('<base>:job:<id>' ->
-- '<base>:kept:<first 10 characters of the id>'), nil for an id of another shape.
local KEPT_SLACK_MS = 10000
local KEPT_MIN_TTL_S = 300
local KEPT_MAX_TTL_S = 315576000  -- 10 years, the longest duration any option takes
local function kept_key(key, id)
  if #id ~= 22 or not string.find(id, '^[A-Za-z0-9_%-]+$')  -- anchored: one pass
      or string.sub(key, -(#id + 5)) ~= ':job:' .. id then
    return nil
  end
  return string.sub(key, 1, #key - #id - 4) .. 'kept:' .. string.sub(id, 1, 10)
end

-- A job's kept result, packed (see kept.decode), or nil: none, or the hash is not one.
local function kept_value(key, id)
  local kept = kept_key(key, id)
  if not kept then
    return nil
  end
  local v = redis.pcall('HGET', kept, id)
  if type(v) == 'string' then
    return v
  end
  return nil
end

-- Whether job `id` has a kept result in a shared hash (false for an id of another shape,
-- or a hash that is not one). `absent` (optional, one table per script call) remembers the
-- hashes found absent: their other ids need no look (one EXISTS per hash, not one
-- HEXISTS per job, for a batch of new ids).
local function kept_exists(key, id, absent)
  local kept = kept_key(key, id)
  if kept == nil or (absent and absent[kept]) then
    return false
  end
  if absent and redis.call('EXISTS', kept) == 0 then
    absent[kept] = true
    return false
  end
  return redis.pcall('HEXISTS', kept, id) == 1
end

local last_varint_n, last_varint = nil, nil  -- a batch packs the same `now` many times
local function varint(n)  -- a whole number from 0 to 2^53, unsigned LEB128
  if n == last_varint_n then
    return last_varint
  end
  last_varint_n = n
  local out = {}
  repeat
    local low = n % 128
    n = (n - low) / 128
    out[#out + 1] = string.char(n > 0 and low + 128 or low)
  until n == 0
  last_varint = table.concat(out)
  return last_varint
end

-- Keep the result of job `id`, which just completed at `now` with `result` (msgpack),
-- for `ttl` s in its tag's shared hash instead of its own key `key`, which is deleted
-- (whatever it holds: the record is rebuilt from the worker's part). `head` is the
-- worker's part of the packed value (kept.packed_head: the record as the start left it,
-- which said it was plain); the end time and the result complete it. Only with a TTL from
-- KEPT_MIN_TTL_S to KEPT_MAX_TTL_S, and only into a hash that is absent (created with
-- ttl + KEPT_SLACK_MS) or expires between ttl and ttl + KEPT_SLACK_MS from now: the result
-- stays readable at least `ttl` s, at most KEPT_SLACK_MS longer. `fresh` (one table per
-- script call) remembers the hashes this call already checked. `key` is not deleted here
-- but added to `gone` (one table per script call: the keys in order, and each key -> true),
-- whose keys the caller deletes together before it writes to any of them again
-- (settle.lua's delete_gone). Returns true when kept there, false when the caller keeps the
-- record in its own key (nothing was written).
local function keep(key, id, now, ttl, head, result, fresh, gone)
  local kept = ttl >= KEPT_MIN_TTL_S and ttl <= KEPT_MAX_TTL_S and head ~= ''
    and kept_key(key, id)
  if not kept then
    return false
  end
  local ttl_ms = ttl * 1000
  local create = false
  if fresh[kept] ~= ttl_ms then
    local left = redis.pcall('PTTL', kept)
    if left == -2 then
      create = true
    elseif not (type(left) == 'number' and left >= ttl_ms
        and left <= ttl_ms + KEPT_SLACK_MS) then
      return false
    end
  end
  if type(redis.pcall('HSET', kept, id, head .. varint(now) .. result)) ~= 'number' then
    return false
  end
  if create then
    local set = redis.pcall('PEXPIRE', kept, string.format('%.0f', ttl_ms + KEPT_SLACK_MS))
    if type(set) ~= 'number' then  -- never seen: undo, and keep the record in its own key
      redis.call('DEL', kept)
      return false
    end
  end
  fresh[kept] = ttl_ms
  gone[#gone + 1] = key
  gone[key] = true
  return true
end

-- Which of the jobs `ids` someone waits for: Job.result() registers the job's id in
-- `waiting`, a sorted set scored with when the registration lapses, and settles publish a
-- job's end only while it is registered. One ZCOUNT (anyone at all?), then ZMSCORE of the
-- ids, 500 at a time. Returns a function of a job id. A `waiting` key that is not a sorted
-- set answers true for every job: a notice nobody hears costs less than one missed.
local function waited_for(waiting, ids, now)
  local anyone = redis.pcall('ZCOUNT', waiting, now, '+inf')
  if type(anyone) ~= 'number' then
    return function() return true end
  end
  local registered = {}
  if anyone > 0 then
    for lo = 1, #ids, 500 do
      local part = {unpack(ids, lo, math.min(lo + 499, #ids))}
      local scores = redis.pcall('ZMSCORE', waiting, unpack(part))
      if type(scores) ~= 'table' or scores.err then
        return function() return true end
      end
      for i, id in ipairs(part) do
        local lapses = tonumber(scores[i])
        if lapses and lapses >= now then registered[id] = true end
      end
    end
  end
  return function(id) return registered[id] == true end
end

-- True for a stream entry id ('1795276503766-0'); garbage read from a record is not one.
local function stream_id(v)
  return type(v) == 'string' and string.match(v, '^%d+%-%d+$') ~= nil
end

-- True while `entry` is pending for `consumer` (nobody has taken it over).
local function held_by(stream, group, entry, consumer)
  return #redis.call('XPENDING', stream, group, entry, entry, 1, consumer) > 0
end

-- Which of `entries` are pending for `consumer`, as a set, in one XPENDING over the range
-- they span (it returns at most what this consumer holds there); entry by entry only if
-- that range holds more than `most`, or if one of `entries` is not a stream entry id or has
-- a part of more than 15 digits (a Lua number holds 53 bits: ids that differ only beyond
-- them would compare equal, and the range could come out empty).
local function held_set(stream, group, consumer, entries, most)
  local held = {}
  if #entries == 0 then return held end
  local lo, hi, lo_ms, lo_seq, hi_ms, hi_seq
  for _, e in ipairs(entries) do  -- each id read once: its two numbers, then compared
    local ms, seq = nil, nil
    if type(e) == 'string' then
      ms, seq = string.match(e, '^(%d+)%-(%d+)$')
    end
    if not ms or #ms > 15 or #seq > 15 then  -- over 15 digits: not exact as a Lua number
      lo = nil
      break
    end
    ms, seq = tonumber(ms), tonumber(seq)
    if not lo or ms < lo_ms or (ms == lo_ms and seq < lo_seq) then
      lo, lo_ms, lo_seq = e, ms, seq
    end
    if not hi or ms > hi_ms or (ms == hi_ms and seq > hi_seq) then
      hi, hi_ms, hi_seq = e, ms, seq
    end
  end
  local rows = nil
  if lo then
    rows = redis.pcall('XPENDING', stream, group, lo, hi, most, consumer)
    if type(rows) == 'table' and rows.err then
      if string.find(rows.err, 'NOGROUP', 1, true) then
        return held  -- no group (the stream was deleted, or the group): nothing is held
      end
      error(rows)
    end
  end
  if rows and #rows < most then
    for _, row in ipairs(rows) do held[row[1]] = true end
    return held
  end
  for _, e in ipairs(entries) do
    if stream_id(e) and held_by(stream, group, e, consumer) then held[e] = true end
  end
  return held
end

-- Which entries this consumer no longer holds are orphans: pending for no consumer of the
-- group (deleted with the stream, trimmed, or the group destroyed) while the record of
-- their job (under `job_prefix`) says it runs on that very entry. Nobody else can ever
-- take or settle such a job: the worker whose attempt runs it keeps it and records its
-- outcome (touch.lua, settle.lua). The entries are ARGV[first], ARGV[first + step]...,
-- each followed by its job id; those in `held` are skipped. One XPENDING per entry not
-- held: rare.
local function orphans(stream, group, held, first, step, job_prefix)
  local found = {}
  for i = first, #ARGV, step do
    local e, id = ARGV[i], ARGV[i + 1]
    if not held[e] and stream_id(e) and id ~= '' then
      local rows = redis.pcall('XPENDING', stream, group, e, e, 1)
      if type(rows) == 'table' and rows.err then
        if not string.find(rows.err, 'NOGROUP', 1, true) then
          error(rows)
        end
        rows = {}
      end
      if #rows == 0 then
        local rec = hmget(job_prefix .. id, 's', 'e')
        if rec and rec[1] == 'running' and rec[2] == e then
          found[e] = true
        end
      end
    end
  end
  return found
end

-- XACK and XDEL of many entries, a few hundred per call.
local function ack_and_delete(stream, group, entries)
  for first = 1, #entries, 500 do
    local chunk = {}
    for j = first, math.min(first + 499, #entries) do chunk[#chunk + 1] = entries[j] end
    redis.call('XACK', stream, group, unpack(chunk))
    redis.call('XDEL', stream, unpack(chunk))
  end
end

-- Whether whole number a <= b, both digits without leading zeros (as Redis writes stream
-- ids), compared as text: a Lua number holds only 53 bits of the 64 an id part may have.
local function digits_le(a, b)
  if #a ~= #b then
    return #a < #b
  end
  return a <= b
end

-- Whether stream id a <= b (both 'ms-seq', as Redis writes them).
local function at_or_before(a, b)
  local am, as = string.match(a, '^(%d+)%-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)%-(%d+)$')
  if not (am and bm) then
    return false
  end
  if am ~= bm then
    return digits_le(am, bm)
  end
  return digits_le(as, bs)
end

-- Whether stream id a comes before b (both as Redis writes them; false for anything else).
local function entry_before(a, b)
  return a ~= b and at_or_before(a, b)
end

-- The last id `group` delivered on `stream`; nil when there is no such group or stream (or
-- the reply cannot be read).
local function group_last_id(stream, group)
  local groups = redis.pcall('XINFO', 'GROUPS', stream)
  if type(groups) ~= 'table' or groups.err then
    return nil
  end
  for _, g in ipairs(groups) do
    local info = {}
    for i = 1, #g - 1, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == group then
      return info['last-delivered-id']
    end
  end
  return nil
end

-- XACK many entries, then take them out of the stream at the least cost to Redis. XDEL
-- finds each entry by walking its listpack node from the node's first entry, the deleted
-- ones included: some 30,000 instructions an entry on nodes of 100 entries (Redis's
-- default), the largest share of what a job costs Redis. XTRIM MINID drops whole nodes at
-- once and walks at most one. Every entry before the group's oldest pending entry (with
-- none pending, before its last delivered one) has been delivered and acknowledged: no
-- consumer holds it and none will be handed it, so what the trim takes out is what
-- settles delete anyway (an entry another settle acknowledged and has not deleted yet: its
-- XDEL then finds it gone; an entry acknowledged or dropped by hand, which the leader's
-- repair puts back from its record, in the stream or not). The entries at or after that
-- bound are deleted one by one, as is every entry when Redis (or a stand-in) refuses the
-- XPENDING or the XTRIM.
local function ack_and_trim(stream, group, entries)
  for first = 1, #entries, 500 do
    redis.call('XACK', stream, group, unpack(entries, first, math.min(first + 499, #entries)))
  end
  local rest = entries
  local oldest = #entries > 0 and redis.pcall('XPENDING', stream, group, '-', '+', 1)
  if type(oldest) == 'table' and not oldest.err then
    local bound = oldest[1] and oldest[1][1] or group_last_id(stream, group)
    if stream_id(bound) then
      rest = {}
      for _, e in ipairs(entries) do
        if not entry_before(e, bound) then rest[#rest + 1] = e end
      end
      if #rest < #entries and type(redis.pcall('XTRIM', stream, 'MINID', bound)) ~= 'number' then
        rest = entries
      end
    end
  end
  for first = 1, #rest, 500 do
    redis.call('XDEL', stream, unpack(rest, first, math.min(first + 499, #rest)))
  end
end

-- Put a started job back to wait until `due` without counting the attempt: its entry leaves
-- the stream (XACK, XDEL), its record says scheduled at `due` with `attempts` undone and
-- `why_field` = `why` (what it waits for), and it joins the delayed set, waking the
-- scheduler if it is now the first due. The caller has checked the record's type.
local function defer_to(stream, group, entry, key, attempts, delayed, channel, id, due,
                        why_field, why)
  ack_and_delete(stream, group, {entry})
  redis.call('HSET', key, 's', 'scheduled', 'd', due, why_field, why,
    'a', attempts > 0 and attempts - 1 or 0)
  redis.call('ZADD', delayed, due, id)
  wake_if_first(delayed, channel, id, due)
end

-- The job id an entry carries in its `i` field ('' if none). An entry written by hand
-- may repeat the field: the last one counts, as in redis-py's reading of the same entry.
local function job_id_of(fields)
  local id = ''
  if type(fields) == 'table' then
    for f = 1, #fields, 2 do
      if fields[f] == 'i' then id = fields[f + 1] end
    end
  end
  return id
end

-- True when `s` is valid UTF-8 (job ids are text: one that is not can never be named by a
-- producer, and workers would read it under another name).
local function utf8_ok(s)
  if string.find(s, '^[\1-\127]*$') then  -- ASCII but NUL (anchored: one pass)
    return true
  end
  local i, n = 1, #s
  while i <= n do
    local c = string.byte(s, i)
    local len = 0
    if c < 0x80 then len = 1
    elseif c >= 0xC2 and c <= 0xDF then len = 2
    elseif c >= 0xE0 and c <= 0xEF then len = 3
    elseif c >= 0xF0 and c <= 0xF4 then len = 4
    else return false end
    if i + len - 1 > n then return false end
    for k = i + 1, i + len - 1 do
      local b = string.byte(s, k)
      if b < 0x80 or b > 0xBF then return false end
    end
    if len == 3 then
      local b = string.byte(s, i + 1)
      if (c == 0xE0 and b < 0xA0) or (c == 0xED and b > 0x9F) then return false end
    elseif len == 4 then
      local b = string.byte(s, i + 1)
      if (c == 0xF0 and b < 0x90) or (c == 0xF4 and b > 0x8F) then return false end
    end
    i = i + len
  end
  return true
end

-- The ms part of a stream entry id ("1795276503766-0" -> 1795276503766), or 0.
local function entry_ms(entry)
  return int(type(entry) == 'string' and string.match(entry, '^(%d+)') or 0) or 0
end

-- Keep the dead-letter stream within `limit` letters, none older than `max_age_ms`: the
-- oldest letters go, with the records of jobs still dead-lettered as those letters (a job
-- requeued since keeps its record). At most 1,000 go per call, so a lowered limit takes
-- several calls rather than one long script. Returns how many letters went.
local function trim_dead(dead, prefix, limit, max_age_ms, now)
  local excess = redis.call('XLEN', dead) - limit
  local cutoff = now - max_age_ms
  local gone = 0
  while gone < 1000 do
    local rows = redis.call('XRANGE', dead, '-', '+', 'COUNT', 100)
    if #rows == 0 then return gone end
    for _, row in ipairs(rows) do
      local entry = row[1]
      if (excess <= 0 and entry_ms(entry) >= cutoff) or gone >= 1000 then
        return gone
      end
      local id = job_id_of(row[2])
      if id ~= '' then
        local rec = hmget(prefix .. id, 's', 'de')
        if rec and rec[1] == 'failed' and rec[2] == entry then
          redis.call('DEL', prefix .. id)
        end
      end
      redis.call('XDEL', dead, entry)
      gone = gone + 1
      excess = excess - 1
    end
  end
  return gone
end

-- The ended index: a capped stream where the scripts that end jobs (settle, abort,
-- promote) note them, one entry per call and 500 jobs, fields job id -> ended-at ms (the
-- record's `et`): Lua's unpack takes a few thousand values at most, and a worker of high
-- concurrency may settle thousands of jobs in one call. Listings of complete and failed
-- jobs read it newest first, and show a job only while its record still ends there. Best
-- effort: a wrong-typed key (or a full Redis) loses the note, never the job's end.
-- `ended` is a flat list {id, ms, id, ms, ...}.
local ENDED_KEEP = 2000
local function index_ended(key, ended)
  for i = 2, #ended, 2 do ended[i] = ms_text(ended[i]) end
  for first = 1, #ended, 1000 do
    redis.pcall('XADD', key, 'MAXLEN', '~', ENDED_KEEP, '*',
      unpack(ended, first, math.min(first + 999, #ended)))
  end
end

local STATES = {scheduled = true, queued = true, running = true, complete = true,
  failed = true, aborted = true, expired = true}

-- The record fields start_entry() reads (one HMGET), in its order. The last five only
-- tell whether the record is plain (see keep).
local START_FIELDS = {'s', 'e', 'x', 'ab', 'j', 'a', 'h', 'q', 'rs', 'd', 'p', 'cw', 'dl',
  'et'}

-- Start one delivered entry (see start.lua): returns {verdict, spec or reason, attempts,
-- history, enqueued ms, now ms, reserved slot ms, plain, resumed}; a runnable job becomes
-- `running` with attempts + 1. `resumed` is 1 when the record already said `running`: an
-- earlier attempt began and never ended (its worker died and a reclaim took the entry over,
-- or the entry came back another way: the group made again, the leader's repair putting a
-- lost entry back), so the worker records that attempt as lost; else 0. The reserved
-- slot (`rs`, written by rate.lua when a rate limit deferred the
-- job; 0 if none or unreadable) is handed back once: it is cleared as the job starts.
-- `plain` is 1 for a job that runs with a plain record (none of x, ab, h, d, p, cw, dl, et:
-- see keep), 0 otherwise.
local function start_entry(entry, id, consumer, prefix, now)
  local key = prefix .. id
  if not utf8_ok(id) then
    return {'unreadable', 'the job id is not valid UTF-8', 0, '', entry_ms(entry), now, 0, 0,
      0}
  end
  local rec = {}
  if id ~= '' then
    rec = hmget(key, unpack(START_FIELDS))
  end
  if not rec then
    return {'unreadable', 'the job key ' .. key .. ' holds something other than a hash',
      0, '', entry_ms(entry), now, 0, 0, 0}
  end
  local state = rec[1]
  if not state then
    return {'missing', '', 0, '', entry_ms(entry), now, 0, 0, 0}
  end
  local attempts, expires = int(rec[6] or 0), rec[3] and int(rec[3])
  local bad = nil
  if not STATES[state] then
    bad = 'its state field is not a known state'
  elseif not attempts or attempts < 0 then
    bad = 'its attempts field is not a number'
  elseif rec[3] and not expires then
    bad = 'its expiry field is not a time'
  end
  if bad then
    return {'corrupt', 'the job record cannot be read: ' .. bad, int(rec[6]) or 0, '',
      entry_ms(entry), now, 0, 0, 0}
  end
  local enqueued = int(rec[8]) or entry_ms(rec[2] or entry)
  local verdict = 'run'
  if (state ~= 'queued' and state ~= 'running') or rec[2] ~= entry then
    verdict = 'stale'
  elseif rec[4] then
    verdict = 'aborted'
  elseif expires and now >= expires then
    verdict = 'expired'
  end
  local reserved = 0
  if verdict == 'run' then
    attempts = attempts + 1
    local a = digits(attempts)
    if int(rec[8]) then
      redis.call('HSET', key, 'a', a, 's', 'running', 'st', ms_text(now), 'w', consumer)
    else  -- keep the enqueue time before the entry id can change (retry, hand-back)
      redis.call('HSET', key, 'a', a, 's', 'running', 'st', ms_text(now), 'w', consumer,
        'q', digits(enqueued))
    end
    if rec[9] then
      reserved = int(rec[9]) or 0
      redis.call('HDEL', key, 'rs')
    end
  end
  local plain = 0
  if verdict == 'run' and not (rec[3] or rec[4] or (rec[7] and rec[7] ~= '') or rec[10]
      or rec[11] or rec[12] or rec[13] or rec[14]) then
    plain = 1
  end
  local resumed = (verdict == 'run' and state == 'running') and 1 or 0
  return {verdict, rec[5] or '', attempts, rec[7] or '', enqueued, now, reserved, plain,
    resumed}
end

-- The key base of the queue every priority level shares, from a key prefix under it that
-- ends with `suffix` (e.g. the lease prefix '<prefix>:{q}:conc:').
local function shared_base(key_prefix, suffix)
  return string.sub(key_prefix, 1, #key_prefix - #suffix)
end

-- The key bases of a queue's priority levels, highest first, from its shared base: the
-- layout of asyncjobs/_redis/keys.py (Keys.base) for asyncjobs/_routing.py's LEVELS.
local function level_bases(shared)
  return {shared .. '@high', shared, shared .. '@low'}
end

-- Let the oldest job of the highest priority level waiting on the concurrency limit `name`
-- go at once (the lease set, under `lease_prefix`, is one for all the queue's levels; each
-- level has its wait set): it moves from its level's delayed set to its level's stream's
-- end, queued, so a waiting job starts as soon as a slot frees rather than at its
-- safety-net due time. Waiters that no longer wait there (aborted, expired, started
-- meanwhile) are dropped on the way, at most 50 per call. Keys of the wrong type are left
-- alone (concurrency.lua repairs them). A limit nothing holds or waits on leaves the
-- `limits` hash (what Admin lists). Returns the id let go, or nil.
local function let_next_go(lease_prefix, limits, name)
  -- The limit is one for every priority level of the queue: the waiters of the highest
  -- level go first, each into its own level's stream.
  local budget = 50
  for _, base in ipairs(level_bases(shared_base(lease_prefix, ':conc:'))) do
    local waiters = base .. ':concwait:' .. name
    while budget > 0 do
      budget = budget - 1
      local top = redis.pcall('ZPOPMIN', waiters)
      if type(top) ~= 'table' or top.err or #top == 0 then
        break
      end
      local next_id = top[1]
      local key = base .. ':job:' .. next_id
      local rec = hmget(key, 's', 'cw')
      if rec and rec[1] == 'scheduled' and rec[2] == name and
          redis.call('ZREM', base .. ':delayed', next_id) == 1 then
        local entry = redis.call('XADD', base .. ':stream', '*', 'i', next_id)
        redis.call('HSET', key, 's', 'queued', 'e', entry)
        return next_id
      end
    end
  end
  if redis.pcall('ZCARD', lease_prefix .. name) == 0 then
    redis.pcall('HDEL', limits, name)
  end
  return nil
end

-- Release the lease job `id` holds on the concurrency limit `name` (see concurrency.lua;
-- `prefix` is the job's own level's job key prefix) and let the limit's next waiter go
-- (let_next_go). Returns the id let go, or nil.
local function release_lease(lease_prefix, limits, prefix, name, id)
  redis.pcall('HDEL', prefix .. id, 'cl')
  local gone = redis.pcall('ZREM', lease_prefix .. name, id)
  if gone ~= 1 then
    return nil
  end
  return let_next_go(lease_prefix, limits, name)
end

-- A job that waited on the concurrency limit `name` (its record's `cw`) and was let go
-- ends without having taken a lease (aborted, expired or dead-lettered before its check):
-- the slot it was let go for goes to the next waiter, when the limit has one free (fewer
-- leases than its N in `limits`; an N that cannot be read lets the waiter go, to be
-- checked). Without it, that waiter would wait for its safety-net due time, up to a
-- lease period, beside a free slot. Returns the id let go, or nil.
local function pass_on(lease_prefix, limits, name)
  local held = redis.pcall('ZCARD', lease_prefix .. name)
  if type(held) ~= 'number' then
    return nil
  end
  local n = redis.pcall('HGET', limits, name)
  n = type(n) == 'string' and int(n) or nil
  if n and held >= n then
    return nil
  end
  return let_next_go(lease_prefix, limits, name)
end
