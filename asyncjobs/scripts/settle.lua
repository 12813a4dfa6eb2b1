-- Settle finished attempts, all or nothing per job: acknowledge and delete the stream entry,
-- then record the outcome. An entry no longer pending for this consumer (it was reclaimed
-- by another worker) is left alone: its new owner settles it.
--
-- KEYS[1] stream, KEYS[2] delayed set, KEYS[3] dead-letter stream, KEYS[4] stats hash
-- ARGV[1] group, ARGV[2] consumer, ARGV[3] job key prefix, ARGV[4] done channel prefix,
-- ARGV[5] wake channel
-- ARGV[6..] six values per job: entry id, job id, outcome, payload, number, history
--   outcome 'complete': payload = result, number = result TTL s (0: drop the record)
--   outcome 'retry':    number = delay ms
--   outcome 'failed':   payload = dead-letter reason (the record is kept until purged)
--   outcome 'expired' | 'aborted': number = record TTL s
--   outcome 'ack':      only acknowledge and delete the entry (stale or duplicate delivery)
--   outcome 'garbage':  payload = reason; entry fields are copied to the dead letters
--   history: the whole error history (msgpack), '' to leave it unchanged
-- Returns one 1 (settled) or 0 (not ours any more) per job.
local stream, group, consumer = KEYS[1], ARGV[1], ARGV[2]
local now = now_ms()
local out = {}
local counts = {}

for b = 6, #ARGV, 6 do
  local entry, id, outcome = ARGV[b], ARGV[b + 1], ARGV[b + 2]
  local payload, number, history = ARGV[b + 3], tonumber(ARGV[b + 4]), ARGV[b + 5]
  if not held_by(stream, group, entry, consumer) then
    out[#out + 1] = 0
  else
    local fields = nil
    if outcome == 'garbage' then
      local found = redis.call('XRANGE', stream, entry, entry)
      fields = found[1] and found[1][2] or {}
    end
    redis.call('XACK', stream, group, entry)
    redis.call('XDEL', stream, entry)
    local key = ARGV[3] .. id
    if history ~= '' then
      redis.call('HSET', key, 'h', history)
    end
    if outcome == 'complete' then
      finish(key, ARGV[4] .. id, 'complete', now, number, payload)
    elseif outcome == 'retry' then
      local due = now + number
      redis.call('HSET', key, 's', 'scheduled', 'd', due)
      redis.call('ZADD', KEYS[2], due, id)
      wake_if_first(KEYS[2], ARGV[5], id, due)
    elseif outcome == 'failed' then
      local dead = redis.call('XADD', KEYS[3], '*', 'i', id, 'r', payload, 't', now)
      redis.call('HSET', key, 'dl', payload, 'de', dead)
      redis.call('PERSIST', key)
      finish(key, ARGV[4] .. id, 'failed', now, -1)
    elseif outcome == 'expired' or outcome == 'aborted' then
      finish(key, ARGV[4] .. id, outcome, now, number)
    elseif outcome == 'garbage' then
      local dead = {'i', id, 'r', payload, 't', now, 'entry', entry}
      for f = 1, #fields do dead[#dead + 1] = fields[f] end
      redis.call('XADD', KEYS[3], '*', unpack(dead))
      outcome = 'failed'
    end
    if outcome ~= 'ack' then
      counts[outcome] = (counts[outcome] or 0) + 1
    end
    out[#out + 1] = 1
  end
end
for outcome, n in pairs(counts) do
  redis.call('HINCRBY', KEYS[4], outcome, n)
end
return out
