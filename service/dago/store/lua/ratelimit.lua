-- One operation on a model's rate-limit bucket (KEYS[1], Keys.rate_limit; fields
-- schema.RateLimit), shared by every worker: RateOp reserve, settle, pause or read. The
-- limits come with each call (the worker's DAGO_RATE_LIMITS: the operator decides them in
-- one place, this decides what they grant).
-- Each measure (requests, input tokens, output tokens per minute; 0: not limited) is a
-- token bucket refilled continuously at its rate, holding at most burst_ms of it, and at
-- least two units: a refused call comes back when its unit is due, a little late (the
-- timers, a worker's start), and a bucket of one unit would lose the refill of that
-- lateness each time (the next call, due a unit later, would find too little).
-- A reservation is granted when every limited measure has room for it, or a full bucket
-- (a call larger than the bucket passes alone and leaves it in debt, repaid as it
-- refills); else nothing is taken and the reply says how long until it is due and which
-- measure is short. A refused call waits behind those refused before it: each measure
-- keeps when its next refused call is due (RATE_LIMIT.NEXT_*: one call's worth of refill
-- after the last one), so a crowd refused at once comes back spread over the time the
-- limit needs for it, one after another, instead of all at the next refill (where all but
-- one would be refused again).
-- Settling gives back what a call reserved and did not use (or takes what it used beyond).
-- A pause (a provider's 429 retry-after) grants nothing to any worker until it ends.
-- Returns {granted, wait_ms, reason, requests, input, output, paused_until_ms}: the
-- levels after the call (text).
local A = ARG.RATELIMIT
local key = KEYS[1]
local op = ARGV[A.OP]
local F = {RATE_LIMIT.REQUESTS, RATE_LIMIT.INPUT, RATE_LIMIT.OUTPUT}
local Q = {RATE_LIMIT.NEXT_REQUESTS, RATE_LIMIT.NEXT_INPUT, RATE_LIMIT.NEXT_OUTPUT}
local NAMES = {'requests_per_minute', 'input_tokens_per_minute', 'output_tokens_per_minute'}
local rates = {tonumber(ARGV[A.REQUESTS_PER_MINUTE]), tonumber(ARGV[A.INPUT_PER_MINUTE]), tonumber(ARGV[A.OUTPUT_PER_MINUTE])}
local amounts = {tonumber(ARGV[A.REQUESTS]), tonumber(ARGV[A.INPUT_TOKENS]), tonumber(ARGV[A.OUTPUT_TOKENS])}
local burst = tonumber(ARGV[A.BURST_MS])
local v = redis.call('HMGET', key, F[1], F[2], F[3], RATE_LIMIT.UPDATED, RATE_LIMIT.PAUSED_UNTIL, Q[1], Q[2], Q[3])
local elapsed = math.max(0, NOW - (tonumber(v[4]) or NOW))
local paused = tonumber(v[5]) or 0
local levels, caps, nexts = {}, {}, {}
for k = 1, 3 do
  caps[k] = math.max(rates[k] * burst / 60000, 2)
  levels[k] = math.min(caps[k], (tonumber(v[k]) or caps[k]) + elapsed * rates[k] / 60000)
  nexts[k] = tonumber(v[5 + k]) or 0
end
local granted, wait, reason = 0, 0, ''
local write = op ~= RateOp.READ
if op == RateOp.RESERVE then
  local short = false
  for k = 1, 3 do
    if rates[k] > 0 and levels[k] < math.min(amounts[k], caps[k]) then short = true end
  end
  if paused > NOW or short then
    -- Refused: due when the bucket has room for it after the calls refused before it
    -- (each measure's next free time), and not before a pause ends.
    local due = math.max(paused, NOW)
    if paused > NOW then reason = RATE_LIMIT.PAUSED end
    for k = 1, 3 do
      if rates[k] > 0 then
        local need = math.min(amounts[k], caps[k])
        local d = math.max(NOW + math.max(0, need - levels[k]) * 60000 / rates[k], nexts[k])
        if d > due then
          due = d
          if paused <= NOW then reason = NAMES[k] end
        end
      end
    end
    for k = 1, 3 do
      if rates[k] > 0 then
        nexts[k] = math.max(nexts[k], due) + math.min(amounts[k], caps[k]) * 60000 / rates[k]
      end
    end
    wait = math.max(1, math.ceil(due - NOW))
  else
    granted = 1
    for k = 1, 3 do
      if rates[k] > 0 then levels[k] = levels[k] - amounts[k] end
    end
  end
elseif op == RateOp.SETTLE then
  for k = 1, 3 do
    if rates[k] > 0 then levels[k] = math.min(caps[k], levels[k] + amounts[k]) end
  end
elseif op == RateOp.PAUSE then
  paused = math.max(paused, NOW + tonumber(ARGV[A.PAUSE_MS]))
end
if write then
  redis.call('HSET', key, F[1], tostring(levels[1]), F[2], tostring(levels[2]), F[3], tostring(levels[3]),
    RATE_LIMIT.UPDATED, NOW_S, RATE_LIMIT.PAUSED_UNTIL, int(paused),
    Q[1], int(nexts[1]), Q[2], int(nexts[2]), Q[3], int(nexts[3]))
  -- A bucket nobody used for a day is full again: it goes.
  redis.call('PEXPIRE', key, 86400000)
end
return {granted, int(wait), reason, tostring(levels[1]), tostring(levels[2]), tostring(levels[3]), int(paused)}
