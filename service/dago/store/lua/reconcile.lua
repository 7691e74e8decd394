-- Reconciles one model call's reservation (ARG.RECONCILE: what reserve granted, tokens and
-- cost) to what the call used: the execution's hold keeps the real usage instead, until
-- its result is applied. Then budget_warning, once per limit, when the run's usage plus
-- what is held reaches warn_share of max_tokens or max_cost_usd. Returns 1, or 0 when the
-- execution is no longer current (its hold was released already).
local A = ARG.RECONCILE
local gid, node, exec = ARGV[A.GRAPH_ID], ARGV[A.NODE], ARGV[A.EXECUTION]
local gs = graph_state(gid)
if gs == nil or gs >= GraphState.COMPLETED then return 0 end
local nk, f = nkey(gid), node .. BUDGET.HOLD
local h = redis.call('HGET', nk, f)
if not h then return 0 end
local t = Budget.hold(h)
if t[1] ~= exec then return 0 end
local rt, rc = tonumber(ARGV[A.RESERVED_TOKENS]), tonumber(ARGV[A.RESERVED_COST])
local ui, uo, uc = tonumber(ARGV[A.INPUT_TOKENS]), tonumber(ARGV[A.OUTPUT_TOKENS]), tonumber(ARGV[A.COST])
redis.call('HSET', nk, f, exec .. ',' .. int(math.max(0, t[2] - rt)) .. ',' .. tostring(math.max(0, t[3] - rc))
  .. ',' .. int(t[4] + ui) .. ',' .. int(t[5] + uo) .. ',' .. tostring(t[6] + uc))
local rk = gkey(Budget.root(gid))
redis.call('HINCRBY', rk, META.RESERVED_TOKENS, int(ui + uo - rt))
redis.call('HINCRBYFLOAT', rk, META.RESERVED_COST, uc - rc)
local lv = Budget.levels(rk)
local m = redis.call('HMGET', rk, META.WARN_SHARE, META.WARNED)
local share, warned = tonumber(m[1]) or 0.8, m[2] or ''
if share <= 0 then share = 0.8 end
local function warn(flag, name, used, max)
  if max > 0 and used >= share * max and not string.find(warned, flag, 1, true) then
    warned = warned .. flag
    redis.call('HSET', rk, META.WARNED, warned)
    emit(Budget.root(gid), EventKind.BUDGET_WARNING, nil, nil, nil, '{"' .. DETAIL.LIMIT .. '":' .. jstr(name)
      .. ',"' .. DETAIL.USED .. '":' .. tostring(used) .. ',"' .. DETAIL.MAX .. '":' .. tostring(max) .. '}')
  end
end
warn('t', BUDGET.LIMIT_TOKENS, lv[3], lv[1])
warn('c', BUDGET.LIMIT_COST, lv[4], lv[2])
flush()
return 1
