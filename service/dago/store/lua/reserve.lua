-- Reserves the worst case of one model call of a running execution (ARG.RESERVE) against
-- its root run's budget (Budget.root: the run itself, or for a child run the run a client
-- submitted that it descends from): input tokens (counted or estimated by the worker) plus
-- max_tokens, at the model's prices, next to the root's usage, everything its tree holds and
-- what its descendants spent that has not rolled up yet (Budget.levels). When that does not
-- fit, max_tokens is lowered to what fits; when that is below the floor the limit is hit.
-- A child's own limits (its graph's, if any) are checked too, next to its own usage.
-- ARG.RESERVE.DAILY non-empty (the worker found the run's namespace over its daily cost
-- budget) hits a limit too (the root's), whatever fits. On a limit, the on_exceed of the
-- run whose limit it is (the target: the root, or the child for its own) decides: FAIL
-- answers fail (the worker fails the attempt with ERROR_CLASS_LIMIT; a descendant's call
-- hitting the root's fails the root here, which cancels its children); PAUSE parks the
-- node (as a wait node waits: its execution's record ends, its timeout timer goes, its
-- work item is acked, it is QUEUED with no item, its next start is the attempt's next
-- execution) and pauses the target (budget_exhausted on it). A paused root parks every call
-- of its tree at once.
-- Returns {outcome (schema.Budget), max_tokens granted, message}.
local A = ARG.RESERVE
local gid, node = ARGV[A.GRAPH_ID], ARGV[A.NODE]
local attempt, iter, exec = ARGV[A.ATTEMPT], ARGV[A.ITERATION], ARGV[A.EXECUTION]
local v = running_exec(gid, node, attempt, iter, exec)
if v == nil then return {BUDGET.STALE, 0, ''} end
local root = Budget.root(gid)
local rk = gkey(root)
local input, want = tonumber(ARGV[A.INPUT_TOKENS]), tonumber(ARGV[A.MAX_TOKENS])
local floor = math.min(tonumber(ARGV[A.FLOOR]), want)
local p_in, p_out = tonumber(ARGV[A.PRICE_IN]), tonumber(ARGV[A.PRICE_OUT])
local grant, limit, msg, target = want, nil, nil, root
-- Whether the call fits `lv` (Budget.levels) of run `of` (`who` names it in the message):
-- lowers the grant to what fits, or sets the limit hit (then `of` is the run that decides).
local function fits(lv, of, who)
  if lv[1] > 0 then
    local room = math.floor(lv[1] - lv[3] - input)
    if room < floor then
      limit, target = BUDGET.LIMIT_TOKENS, of
      msg = 'a model call of ' .. input .. ' input tokens and at least ' .. floor .. ' output tokens does not fit: '
        .. who .. ' used or reserved ' .. lv[3] .. ' of its ' .. lv[1] .. ' tokens (limits.max_tokens)'
      return
    elseif room < grant then grant = room end
  end
  if lv[2] > 0 then
    local left = lv[2] - lv[4] - input * p_in
    local room = want
    if p_out > 0 then room = math.floor(left / p_out) elseif left < 0 then room = -1 end
    if room < floor then
      limit, target = BUDGET.LIMIT_COST, of
      msg = string.format('a model call of %d input tokens and at least %d output tokens (worst case $%.6f) does not fit: %s used or reserved $%.6f of its $%s (limits.max_cost_usd)',
        input, floor, input * p_in + floor * p_out, who, lv[4], tostring(lv[2]))
    elseif room < grant then grant = room end
  end
end
if root == gid then
  fits(Budget.levels(rk), gid, 'the run has')
else
  fits(Budget.levels(rk), root, 'its root run ' .. root .. ' and the runs it started have')
  -- A child's own limits (its graph's) hold too, against its own usage: its calls' holds
  -- and its descendants' spend are kept on the root.
  if not limit then fits(Budget.levels(gkey(gid)), gid, 'the run has') end
end
if not limit and ARGV[A.DAILY] ~= '' then limit, msg = BUDGET.LIMIT_DAILY, ARGV[A.DAILY] end
local paused = redis.call('HGET', rk, META.PAUSED) == '1'
if not paused and root ~= gid and redis.call('HGET', gkey(gid), META.PAUSED) == '1' then
  paused, target = true, gid
end
if paused and not limit then
  limit, msg = '', 'the run is paused: its budget ran out (UpdateGraphLimits resumes it)'
  if target ~= gid then msg = 'its root run ' .. root .. ' is paused: its budget ran out (UpdateGraphLimits on it resumes it)' end
elseif paused then
  target = (redis.call('HGET', rk, META.PAUSED) == '1') and root or gid
end
local tk = gkey(target)
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
if not paused and redis.call('HGET', tk, META.ON_EXCEED) ~= '2' then
  if target ~= gid then
    -- The root's budget is the tree's: the root fails, which cancels its children (this one
    -- among them, so the worker's report of the attempt finds it ended).
    fail_graph(target, err_json(ErrorClass.LIMIT, 'run ' .. gid .. ', node ' .. node .. ': ' .. msg, false), nil)
    flush()
  end
  return {BUDGET.FAIL, 0, msg}
end
-- Park the node: no slot, no pending item; the root resumes it (limits.lua).
Budget.release(gid, node, true)
end_attempt_timer(gid, node, iter, attempt, v)
local worker = redis.call('HGET', hkey(gid, node), node .. F_WORKER)
node_set(gid, node, node .. F_STATE, S_QUEUED, node .. F_EXEC, '-' .. exec,
  record_key(node, iter, attempt, exec), short_record(v[4] or NOW_S, NOW_S, S_QUEUED, worker))
local entry = (target == gid) and node or (gid .. '|' .. node)
local parked = redis.call('HGET', tk, META.PARKED)
redis.call('HSET', tk, META.PARKED, (parked and parked ~= '') and (parked .. ',' .. entry) or entry)
if not paused then
  redis.call('HSET', tk, META.PAUSED, '1')
  Budget.index_pause(target, true)
  redis.call('HINCRBY', K_STATS, STATS.PAUSED, 1)
end
local detail = '{"' .. DETAIL.LIMIT .. '":' .. jstr(limit) .. ',"' .. DETAIL.MESSAGE .. '":' .. jstr(msg)
if target == gid then
  emit(gid, EventKind.BUDGET_EXHAUSTED, node, attempt, iter, detail .. '}')
else
  -- On the root, whose budget it is; the node is the descendant's, named in the detail.
  emit(target, EventKind.BUDGET_EXHAUSTED, nil, nil, nil, detail .. ',"' .. DETAIL.CHILD .. '":' .. jstr(gid)
    .. ',"' .. DETAIL.NODE .. '":' .. jstr(node) .. '}')
end
ack_all({ARGV[A.MSG_ID]})
flush()
return {BUDGET.PAUSED, 0, msg}
