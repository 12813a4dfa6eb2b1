-- Shared prelude (prepended to every script by _scripts.py): the Redis clock in ms.
-- Every timestamp asyncjobs stores comes from here, so producers and workers on hosts
-- with skewed clocks still agree on due times, expiry and latency.
local unpack = unpack or table.unpack

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Publish a wake-up for the scheduler when `due` is earlier than every other due time.
local function wake_if_first(delayed, channel, id, due)
  local first = redis.call('ZRANGE', delayed, 0, 0)
  if first[1] == id then
    redis.call('PUBLISH', channel, due)
  end
end
