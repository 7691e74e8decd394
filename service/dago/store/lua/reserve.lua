-- Reserves the worst case of one model call of a running execution (ARG.RESERVE) against
-- its run's budget (Budget.root): input tokens (counted or estimated by the worker) plus
-- max_tokens, at the model's prices. When that does not fit next to the run's usage and
-- what is held, max_tokens is lowered to what fits; when that is below the floor the limit
-- is hit: on_exceed FAIL answers fail (the worker fails the attempt with ERROR_CLASS_LIMIT);
-- PAUSE parks the node (as a wait node waits: its execution's record ends, its timeout
-- timer goes, its work item is acked, it is QUEUED with no item, its next start is the
-- attempt's next execution) and pauses the run (budget_exhausted). A paused run parks
-- every call at once. Returns {outcome (schema.Budget), max_tokens granted, message}.
local A = ARG.RESERVE
local gid, node = ARGV[A.GRAPH_ID], ARGV[A.NODE]
local attempt, iter, exec = ARGV[A.ATTEMPT], ARGV[A.ITERATION], ARGV[A.EXECUTION]
local v = running_exec(gid, node, attempt, iter, exec)
if v == nil then return {BUDGET.STALE, 0, ''} end
local rk = gkey(Budget.root(gid))
local lv = Budget.levels(rk)
local input, want = tonumber(ARGV[A.INPUT_TOKENS]), tonumber(ARGV[A.MAX_TOKENS])
local floor = math.min(tonumber(ARGV[A.FLOOR]), want)
local p_in, p_out = tonumber(ARGV[A.PRICE_IN]), tonumber(ARGV[A.PRICE_OUT])
local grant, limit, msg = want, nil, nil
if lv[1] > 0 then
  local room = math.floor(lv[1] - lv[3] - input)
  if room < floor then
    limit = BUDGET.LIMIT_TOKENS
    msg = 'a model call of ' .. input .. ' input tokens and at least ' .. floor .. ' output tokens does not fit: the run has used or reserved '
      .. lv[3] .. ' of its ' .. lv[1] .. ' tokens (limits.max_tokens)'
  elseif room < grant then grant = room end
end
if not limit and lv[2] > 0 then
  local left = lv[2] - lv[4] - input * p_in
  local room = want
  if p_out > 0 then room = math.floor(left / p_out) elseif left < 0 then room = -1 end
  if room < floor then
    limit = BUDGET.LIMIT_COST
    msg = string.format('a model call of %d input tokens and at least %d output tokens (worst case $%.6f) does not fit: the run has used or reserved $%.6f of its $%s (limits.max_cost_usd)',
      input, floor, input * p_in + floor * p_out, lv[4], tostring(lv[2]))
  elseif room < grant then grant = room end
end
local paused = redis.call('HGET', rk, META.PAUSED) == '1'
if paused and not limit then
  limit, msg = '', 'the run is paused: its budget ran out (UpdateGraphLimits resumes it)'
end
if not limit then
  -- The hold of an earlier execution (none should be left: a start releases it) is replaced.
  local nk, f = nkey(gid), node .. BUDGET.HOLD
  local h = redis.call('HGET', nk, f)
  local t = h and Budget.hold(h)
  if t and t[1] ~= exec then Budget.release(gid, node, true); t = nil end
  t = t or {exec, 0, 0, 0, 0, 0}
  local rt, rc = input + grant, input * p_in + grant * p_out
  redis.call('HSET', nk, f, exec .. ',' .. int(t[2] + rt) .. ',' .. tostring(t[3] + rc) .. ','
    .. int(t[4]) .. ',' .. int(t[5]) .. ',' .. tostring(t[6]))
  redis.call('HINCRBY', rk, META.RESERVED_TOKENS, int(rt))
  redis.call('HINCRBYFLOAT', rk, META.RESERVED_COST, rc)
  return {BUDGET.FIT, grant, ''}
end
if not paused and redis.call('HGET', gkey(gid), META.ON_EXCEED) ~= '2' then
  return {BUDGET.FAIL, 0, msg}
end
-- Park the node: no slot, no pending item; the run resumes it (limits.lua).
Budget.release(gid, node, true)
end_attempt_timer(gid, node, iter, attempt, v)
local worker = redis.call('HGET', nkey(gid), node .. F_WORKER)
node_set(gid, node, node .. F_STATE, S_QUEUED, node .. F_EXEC, '-' .. exec,
  record_key(node, iter, attempt, exec), short_record(v[4] or NOW_S, NOW_S, S_QUEUED, worker))
local parked = redis.call('HGET', rk, META.PARKED)
redis.call('HSET', rk, META.PARKED, (parked and parked ~= '') and (parked .. ',' .. node) or node)
if not paused then
  redis.call('HSET', rk, META.PAUSED, '1')
  Budget.index_pause(gid, true)
  redis.call('HINCRBY', K_STATS, STATS.PAUSED, 1)
end
emit(gid, EventKind.BUDGET_EXHAUSTED, node, attempt, iter,
  '{"' .. DETAIL.LIMIT .. '":' .. jstr(limit) .. ',"' .. DETAIL.MESSAGE .. '":' .. jstr(msg) .. '}')
ack_all({ARGV[A.MSG_ID]})
flush()
return {BUDGET.PAUSED, 0, msg}
