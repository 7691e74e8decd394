-- Creates a graph run and dispatches its entry nodes, or returns the run an earlier
-- submission with the same request_id created. The topology's field/value pairs follow
-- the fixed arguments. Returns {created | exists | conflict, graph_id, state}.
local A = ARG.SUBMIT
local gid, rid, hash, ns = ARGV[A.GRAPH_ID], ARGV[A.REQUEST_ID], ARGV[A.BODY_HASH], ARGV[A.NAMESPACE]
local gk = gkey(gid)
-- The client may run a function again when a reply is lost; a fresh graph id that already
-- exists can only be this very submission.
if redis.call('EXISTS', gk) == 1 then
  return {'created', gid, tonumber(redis.call('HGET', gk, META.STATE)) or GraphState.UNSPECIFIED}
end
local rk = rid ~= '' and reqkey(ns, rid)
if rk then
  local v = redis.call('HMGET', rk, REQUEST.GRAPH, REQUEST.BODY_HASH)
  if v[1] then
    if v[2] ~= hash then return {'conflict', v[1], GraphState.UNSPECIFIED} end
    return {'exists', v[1], tonumber(redis.call('HGET', gkey(v[1]), META.STATE)) or GraphState.UNSPECIFIED}
  end
end
-- The namespace's active-runs cap, counted in the step that creates the run: a burst of
-- submits to one shard cannot pass it (docs/limits.md, "Quotas at submit").
local cap = tonumber(ARGV[A.MAX_ACTIVE]) or -1
if cap >= 0 then
  local idx = nsindex(ns)
  local n = redis.call('ZCARD', idx .. ':' .. GraphState.SUBMITTED) + redis.call('ZCARD', idx .. ':' .. GraphState.RUNNING)
  if n >= cap then return {'quota', '', n} end
end
if rk then redis.call('HSET', rk, REQUEST.GRAPH, gid, REQUEST.BODY_HASH, hash) end
local meta = {META.RETENTION, ARGV[A.RETENTION_S], META.REQUEST_ID, rid,
  META.MAX_EVENTS, ARGV[A.MAX_EVENTS], META.MAX_BYTES, ARGV[A.MAX_BYTES], META.ARCHIVE, ARGV[A.ARCHIVE],
  META.PRIORITY, ARGV[A.PRIORITY], META.WARN_SHARE, ARGV[A.WARN_SHARE]}
-- Fields stored only when given.
local function opt(field, value, unset)
  if value ~= unset then meta[#meta + 1] = field; meta[#meta + 1] = value end
end
local fork = ARGV[A.FORKED_FROM]
opt(META.TRACEPARENT, ARGV[A.TRACEPARENT], '')
opt(META.ON_EXCEED, ARGV[A.ON_EXCEED], '0')
opt(META.FORKED_FROM, fork, '')
local sub = {}
if ARGV[A.DEF_NAME] ~= '' then
  sub[DETAIL.DEFINITION] = {ARGV[A.DEF_NAME], tonumber(ARGV[A.DEF_VERSION]), ARGV[A.DEF_DIGEST]}
end
if fork ~= '' then sub[DETAIL.SOURCE] = fork end
local entries = create_run(gid, A, ARGV[A.INPUTS], ns, meta, sub)
-- A fork's reused nodes ({node, skipped, output, taken edges}) are finished now, then their
-- edges into the nodes that run again resolve as recorded: the joins they complete fire.
local reused = cjson.decode(ARGV[A.REUSED])
if #reused > 0 then
  local is_reused, ready, loops, stored = {}, {}, {}, 0
  for _, r in ipairs(reused) do
    stored = stored + #r[3]
    local node = r[1]
    is_reused[node] = true
    if r[2] then
      node_set(gid, node, node .. F_STATE, NodeState.SKIPPED, node .. F_ENDED, NOW, node .. NODE.REUSED, 1)
    else
      node_set(gid, node, node .. F_STATE, S_COMPLETED, node .. F_ENDED, NOW, node .. NODE.OUTPUT, r[3],
        node .. NODE.NEXT, r[4], node .. NODE.REUSED, 1)
    end
    open_add(gid, -1)
    emit(gid, EventKind.NODE_REUSED, node, 0, 1, jstr({[DETAIL.SOURCE] = fork, [DETAIL.SKIPPED] = r[2]}))
  end
  -- The reused outputs count against the run's stored bytes (META.MAX_BYTES) as its own.
  redis.call('HINCRBY', gk, META.BYTES, stored)
  redis.call('HSET', gk, META.REUSED, #reused)
  for _, r in ipairs(reused) do
    local taken = {}
    for x in string.gmatch(r[4], '[^,]+') do taken[x] = true end
    reuse_edges(gid, r[1], taken, is_reused, ready)
  end
  settle(gid, ready, loops)
end
for _, node in ipairs(entries) do dispatch(gid, node, '1', '1') end
local deadline = tonumber(ARGV[A.DEADLINE_MS])
if deadline > 0 then redis.call('ZADD', K_TIMERS, NOW + deadline, TIMER.DEADLINE .. '|' .. gid) end
flush()
return {'created', gid, GraphState.SUBMITTED}
