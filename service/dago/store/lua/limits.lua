-- Changes a run's budgets (UpdateGraphLimits; ARG.LIMITS: '' keeps a limit) and resumes it
-- when it is paused: the parked nodes (its own and its descendant runs', whose model calls
-- charge its budget) get work items again (their next start is the attempt's next
-- execution) and graph_resumed is appended. A new limit below what the run
-- has used plus what is held is refused. Returns {outcome, state, detail}: {'missing', 0,
-- ''} | {'ended', state, ''} | {'below', state, 'limit|used'} | {'updated', state,
-- resumed ('1' or '0')}; the state is the stored one (RUNNING while paused).
local A = ARG.LIMITS
local gid = ARGV[A.GRAPH_ID]
local gs = graph_state(gid)
if gs == nil then return {'missing', 0, ''} end
if gs >= GraphState.COMPLETED then return {'ended', gs, ''} end
local gk = gkey(gid)
local lv = Budget.levels(gk)
local mt, mc = ARGV[A.MAX_TOKENS], ARGV[A.MAX_COST]
if mt ~= '' and tonumber(mt) < lv[3] then return {'below', gs, BUDGET.LIMIT_TOKENS .. '|' .. int(lv[3])} end
if mc ~= '' and tonumber(mc) < lv[4] then return {'below', gs, BUDGET.LIMIT_COST .. '|' .. tostring(lv[4])} end
local warned = redis.call('HGET', gk, META.WARNED) or ''
if mt ~= '' then
  redis.call('HSET', gk, META.MAX_TOKENS, mt)
  warned = string.gsub(warned, 't', '')
end
if mc ~= '' then
  redis.call('HSET', gk, META.MAX_COST, mc)
  warned = string.gsub(warned, 'c', '')
end
redis.call('HSET', gk, META.WARNED, warned)
if redis.call('HGET', gk, META.PAUSED) ~= '1' then return {'updated', gs, '0'} end
local parked = redis.call('HGET', gk, META.PARKED) or ''
redis.call('HDEL', gk, META.PAUSED, META.PARKED)
Budget.index_pause(gid, false)
redis.call('HINCRBY', K_STATS, STATS.PAUSED, -1)
local sent, sent_desc = {}, {}
for entry in string.gmatch(parked, '[^,]+') do
  -- A descendant run's node (its calls charge this run's budget) is '<graph>|<node>'.
  local g, node = string.match(entry, '^([^|]+)|(.+)$')
  if not g then g, node = gid, entry end
  local gs2 = graph_state(g)
  local v = redis.call('HMGET', hkey(g, node), node .. F_STATE, node .. F_ATTEMPT, node .. F_ITER)
  -- Still parked (QUEUED with no item): nothing else moves a parked node but its run's end.
  if gs2 ~= nil and gs2 < GraphState.COMPLETED and v[1] == S_QUEUED then
    -- Queued for its turn like any dispatch (Fair.done counts on every work entry coming
    -- from a take).
    Fair.push(g, node, v[2], v[3])
    dispatched = dispatched + 1
    if g == gid then sent[#sent + 1] = entry else sent_desc[#sent_desc + 1] = entry end
  end
end
local detail = '{"' .. DETAIL.NODES .. '":' .. (#sent > 0 and jstr(sent) or '[]')
if #sent_desc > 0 then detail = detail .. ',"' .. DETAIL.CHILD_NODES .. '":' .. jstr(sent_desc) end
emit(gid, EventKind.GRAPH_RESUMED, nil, nil, nil, detail .. '}')
flush()
return {'updated', gs, '1'}
