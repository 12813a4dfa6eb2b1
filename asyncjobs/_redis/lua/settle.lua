-- Settle finished attempts, all or nothing per job: acknowledge and delete the stream
-- entries, then record the outcomes. An entry no longer pending for this consumer (it was
-- reclaimed by another worker) is left alone: its new owner settles it. An orphan (pending
-- for nobody, its record running on it: the stream was deleted or trimmed, the group
-- destroyed; see `orphans`) is deleted (if still in the stream) and recorded as if held:
-- nobody else ever could. A job key that
-- cannot hold a record (not a hash) dead-letters the entry instead, key untouched; but a
-- 'keep' whose shared hash takes the result deletes the job key whatever it holds (the
-- record is rebuilt from the worker's part, see keep).
-- The delayed set and the dead-letter stream are checked before anything is written: if
-- either is of the wrong type the call fails and writes nothing.
--
-- Per batch, not per job: one XPENDING tells which entries are still this consumer's, one
-- XACK acknowledges them, and one XTRIM MINID takes them out of the stream where they lie
-- below every entry still pending (one XDEL the others: see ack_and_trim), and a job's end
-- is published only when someone waits for that job (Job.result() registers the job's id
-- in the `waiting` set): one ZCOUNT, and one ZMSCORE of the batch's ids when anyone waits
-- at all. Per job there remain the record's
-- writes: HSET and EXPIRE for a result kept in its own key, or for 'keep' HSET of the
-- shared hash (and once per shared hash, PTTL and PEXPIRE); the job keys of the kept
-- results are deleted together, one DEL for the batch (delete_gone), before anything else
-- writes to one of them.
--
-- Memory first: the entries are acknowledged and deleted before anything is written. On a
-- Redis at its maxmemory (noeviction) a script may go on writing once it has written, and
-- XACK / XTRIM / XDEL are allowed there, so settling frees memory and a full Redis drains.
--
-- Jobs that end (complete, failed with a record, expired, aborted) are noted in the ended
-- index (see index_ended).
--
-- KEYS[1] stream, KEYS[2] delayed set, KEYS[3] dead-letter stream, KEYS[4] stats hash,
-- KEYS[5] waiting set, KEYS[6] ended index, KEYS[7] concurrency limits hash
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] job key prefix, ARGV[4] done channel prefix,
-- ARGV[5] wake channel, ARGV[6] per-minute counters key prefix, ARGV[7] most dead letters
-- kept, ARGV[8] longest a dead letter is kept (ms), ARGV[9] concurrency lease set prefix,
-- ARGV[10] concurrency wait set prefix (unused: release_lease finds every level's wait set)
-- ARGV[11..] seven values per job: entry id, job id, outcome, payload, number, history,
--   lease: the concurrency limit whose lease the attempt held ('' for none); whatever the
--   outcome, a settled job releases it and lets the limit's oldest waiter go
--   (release_lease); a job no longer this consumer's keeps it (its new owner settles).
--   A job without one that ends expired, aborted or failed after waiting on a limit (its
--   record's `cw`: a release let it go) passes the slot on to the next waiter (pass_on)
--   outcome 'complete': payload = result, number = result TTL s (0: drop the record)
--   outcome 'keep':     complete, the result kept in its tag's shared hash (see keep in the
--                       prelude): history = the head of the packed record; where the hash
--                       cannot take it, the same as 'complete' (without a history)
--   outcome 'retry':    number = delay ms; a job whose abort was requested meanwhile (the
--                       record's `ab`) ends aborted instead (kept ABORTED_TTL_S)
--   outcome 'failed':   payload = dead-letter reason; the record is kept as long as its
--                       letter (deleted when the letter is trimmed; ARGV[8] at most)
--   outcome 'expired' | 'aborted': number = record TTL s
--   outcome 'ack':      only acknowledge and delete the entry (stale or duplicate delivery)
--   outcome 'garbage':  payload = reason; entry fields are copied to the dead letters
--   history: the whole error history (msgpack), '' to leave it unchanged
-- Returns per job 1 (settled), 0 (not ours any more), or 2 (settled, but a retry ended
-- aborted: its abort was requested meanwhile).
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local ABORTED_TTL_S = 86400  -- how long an aborted record is kept: _model.ENDED_TTL_S
check_type(KEYS[2], 'zset')
check_type(KEYS[3], 'stream')
local now = now_ms()
local out = {}
local counts = {}
local lettered = false
local ended = {}
local kept = {}  -- the kept-result hashes this call wrote to (see keep)
local gone = {}  -- the job keys of results kept in a shared hash, not deleted yet (see keep)

-- Delete the keys in `gone`, 500 per DEL; nothing is pending deletion after.
local function delete_gone()
  for first = 1, #gone, 500 do
    redis.call('DEL', unpack(gone, first, math.min(first + 499, #gone)))
  end
  gone = {}
end

-- A dead letter: the job id, the reason, the time, and `extra` fields (the raw entry's).
-- The keys of the results kept so far are deleted first: the XADD can fail (a letters
-- stream at the last possible id), and a call that fails midway must not leave a job key
-- saying `running` beside its kept result.
local function letter(id, reason, extra)
  delete_gone()
  local fields = {'i', id, 'r', reason, 't', now}
  for _, f in ipairs(extra or {}) do fields[#fields + 1] = f end
  lettered = true
  return redis.call('XADD', KEYS[3], '*', unpack(fields))
end

-- The error history, when the worker sent one, as fields for finish() / HSET.
local function with_history(fields, history)
  if history ~= '' then
    fields[#fields + 1] = 'h'
    fields[#fields + 1] = history
  end
  return fields
end

local function record(entry, id, outcome, payload, number, history, raw, quiet)
  local key = ARGV[3] .. id
  local done = ARGV[4] .. id
  local broken = nil
  if outcome == 'keep' then  -- complete, its result kept in a shared hash if it can be
    outcome = 'complete'
    if keep(key, id, now, number, history, payload, kept, gone) then
      if not quiet then
        redis.call(PUBLISH, done, 'complete')
      end
      ended[#ended + 1] = id
      ended[#ended + 1] = now
      return outcome
    end
    history = ''
  end
  if outcome == 'complete' then
    broken = finish(key, done, 'complete', now, number, with_history({'r', payload}, history),
      quiet)
  elseif outcome == 'retry' then
    local rec = hmget(key, 'ab')
    if rec and rec[1] then
      -- Its abort was requested while the attempt was ending (too late to cancel it): the
      -- job ends aborted now rather than wait out its retry delay with the abort pending.
      outcome = 'aborted'
      broken = finish(key, done, outcome, now, ABORTED_TTL_S, with_history({}, history),
        quiet)
    else
      local due = now + number
      local ok = redis.pcall('HSET', key, unpack(with_history({'s', 'scheduled', 'd', due},
        history)))
      if type(ok) == 'table' and ok.err then
        broken = 'the job key cannot hold a record: ' .. tostring(ok.err)
      else
        redis.call('ZADD', KEYS[2], due, id)
        wake_if_first(KEYS[2], ARGV[5], id, due)
      end
    end
  elseif outcome == 'failed' then
    local de = letter(id, payload)
    -- A job key that cannot hold a record keeps the letter just written, and no record.
    if not finish(key, done, 'failed', now, math.ceil(tonumber(ARGV[8]) / 1000),
        with_history({'dl', payload, 'de', de}, history), quiet) then
      ended[#ended + 1] = id
      ended[#ended + 1] = now
    end
  elseif outcome == 'expired' or outcome == 'aborted' then
    broken = finish(key, done, outcome, now, number, with_history({}, history), quiet)
  elseif outcome == 'garbage' then
    letter(id, payload, raw)
    outcome = 'failed'
  end
  if broken then
    letter(id, broken, {'entry', entry})
    outcome = 'failed'
  elseif outcome == 'complete' or outcome == 'expired' or outcome == 'aborted' then
    ended[#ended + 1] = id
    ended[#ended + 1] = now
  end
  return outcome
end

-- The outcomes of a job that may end without having run: one that waited on a concurrency
-- limit and was let go by a release (its record's `cw`) then passes its slot on.
local PASSES_ON = {expired = true, aborted = true, failed = true}

local entries = {}
for b = 11, #ARGV, 7 do entries[#entries + 1] = ARGV[b] end
local held = held_set(stream, group, consumer, entries, #entries * 4 + 1000)
local orphan = orphans(stream, group, held, 11, 7, ARGV[3])
-- A garbage entry's fields are the evidence: read them before the entry goes (held, or an
-- orphan still in the stream).
local raws = {}
local mine, listed = {}, {}
for b = 11, #ARGV, 7 do
  local entry = ARGV[b]
  if ARGV[b + 2] == 'garbage' and (held[entry] or orphan[entry]) and not raws[entry] then
    local found = redis.call('XRANGE', stream, entry, entry)
    local raw = {'entry', entry}
    for _, f in ipairs(found[1] and found[1][2] or {}) do raw[#raw + 1] = f end
    raws[entry] = raw
  end
  if held[entry] and not listed[entry] then
    listed[entry] = true
    mine[#mine + 1] = entry
  end
end
ack_and_trim(stream, group, mine)
local strays = {}
for entry in pairs(orphan) do strays[#strays + 1] = entry end
for first = 1, #strays, 500 do  -- an orphan still in the stream (acknowledged) goes too
  redis.call('XDEL', stream, unpack(strays, first, math.min(first + 499, #strays)))
end
local ids = {}
for b = 11, #ARGV, 7 do ids[#ids + 1] = ARGV[b + 1] end
local waited = waited_for(KEYS[5], ids, now)
for b = 11, #ARGV, 7 do
  local entry = ARGV[b]
  if not held[entry] and not orphan[entry] then
    out[#out + 1] = 0
  else
    held[entry], orphan[entry] = nil, nil  -- an entry listed twice is settled once
    if gone[ARGV[3] .. ARGV[b + 1]] then  -- the same job settled again in this batch
      delete_gone()
    end
    local waited_on = nil  -- the limit a job ending unrun was let go from (see pass_on)
    if ARGV[b + 6] == '' and PASSES_ON[ARGV[b + 2]] then
      local rec = hmget(ARGV[3] .. ARGV[b + 1], 'cw')
      waited_on = rec and rec[1] or nil
    end
    local outcome = record(entry, ARGV[b + 1], ARGV[b + 2], ARGV[b + 3],
      tonumber(ARGV[b + 4]) or 0, ARGV[b + 5], raws[entry], not waited(ARGV[b + 1]))
    if ARGV[b + 6] ~= '' then
      delete_gone()  -- the waiter it lets go is written to: no key of ours is left behind
      release_lease(ARGV[9], KEYS[7], ARGV[3], ARGV[b + 6],
        ARGV[b + 1])
    elseif waited_on then
      delete_gone()
      pass_on(ARGV[9], KEYS[7], waited_on)
    end
    if outcome ~= 'ack' then
      counts[outcome] = (counts[outcome] or 0) + 1
    end
    out[#out + 1] = (ARGV[b + 2] == 'retry' and outcome == 'aborted') and 2 or 1
  end
end
delete_gone()
if lettered then
  counts['trimmed'] = trim_dead(KEYS[3], ARGV[3], tonumber(ARGV[7]), tonumber(ARGV[8]), now)
  if counts['trimmed'] == 0 then counts['trimmed'] = nil end
end
for outcome, n in pairs(counts) do
  count(KEYS[4], outcome, n)
end
counts['trimmed'] = nil
count_minute(ARGV[6], now, counts)
index_ended(KEYS[6], ended)
return out
