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
local ids = cjson.decode(ARGV[A.NODE_IDS])
local plans = cjson.decode(ARGV[A.START_PLANS])
local entries = cjson.decode(ARGV[A.ENTRIES])
redis.call('HSET', gk, META.STATE, GraphState.SUBMITTED, META.NAME, ARGV[A.NAME], META.CREATED, NOW,
  META.SEQ, 0, META.STEPS, 0, META.OPEN, #ids, META.DEFINITION, ARGV[A.DEFINITION],
  META.INPUTS, ARGV[A.INPUTS], META.NODE_IDS, ARGV[A.NODE_IDS], META.MAX_STEPS, ARGV[A.MAX_STEPS],
  META.MAX_TOKENS, ARGV[A.MAX_TOKENS], META.MAX_COST, ARGV[A.MAX_COST],
  META.RETENTION, ARGV[A.RETENTION_S], META.REQUEST_ID, rid, META.NAMESPACE, ns,
  META.MAX_EVENTS, ARGV[A.MAX_EVENTS], META.MAX_BYTES, ARGV[A.MAX_BYTES],
  META.BYTES, #ARGV[A.DEFINITION] + #ARGV[A.INPUTS], META.ARCHIVE, ARGV[A.ARCHIVE])
redis.call('HSET', gk, META.PRIORITY, ARGV[A.PRIORITY])
if ARGV[A.TRACEPARENT] ~= '' then redis.call('HSET', gk, META.TRACEPARENT, ARGV[A.TRACEPARENT]) end
if ARGV[A.ON_EXCEED] ~= '0' then redis.call('HSET', gk, META.ON_EXCEED, ARGV[A.ON_EXCEED]) end
redis.call('HSET', gk, META.WARN_SHARE, ARGV[A.WARN_SHARE])
if ARGV[A.DEF_NAME] ~= '' then
  redis.call('HSET', gk, META.DEF_NAME, ARGV[A.DEF_NAME], META.DEF_VERSION, ARGV[A.DEF_VERSION],
    META.DEF_DIGEST, ARGV[A.DEF_DIGEST])
end
-- Node and topology fields are written a few hundred per HSET, not one command per node.
local function hset_all(key, fv)
  for k = 1, #fv, 600 do
    redis.call('HSET', key, unpack(fv, k, math.min(k + 599, #fv)))
  end
end
local tk = gk .. ':t'
local fv = {}
for i = A.FIRST, #ARGV do fv[#fv + 1] = ARGV[i] end
hset_all(tk, fv)
local nk = nkey(gid)
fv = {}
for k, node in ipairs(ids) do
  local n = #fv
  fv[n + 1] = node .. F_STATE; fv[n + 2] = S_PENDING
  fv[n + 3] = node .. F_ATTEMPT; fv[n + 4] = '0'
  fv[n + 5] = node .. F_ITER; fv[n + 6] = '1'
  fv[n + 7] = node .. NODE.PLAN; fv[n + 8] = plans[k]
end
hset_all(nk, fv)
-- The node hash gets ~10 fields per node and every transition reads and writes it several
-- times. Redis keeps hashes of up to hash-max-listpack-entries (512 by default) fields as a
-- listpack, where each access scans the fields one by one: for a graph of more than a few
-- nodes that made each command cost several times its price. A value longer than
-- hash-max-listpack-value (64) turns the hash into a hash table for good (deleting it does
-- not turn it back), so every access is O(1). The topology hash likewise.
if #ids > 4 then
  local long = string.rep('.', 65)
  for _, k in ipairs({nk, tk}) do
    redis.call('HSET', k, '~', long)
    redis.call('HDEL', k, '~')
  end
end
redis.call('HINCRBY', K_STATS, STATS.SUBMITTED, 1)
local idx = nsindex(ns)
redis.call('ZADD', idx, NOW, gid)
redis.call('ZADD', idx .. ':' .. GraphState.SUBMITTED, NOW, gid)
local fork = ARGV[A.FORKED_FROM]
local sub = {[DETAIL.NAME] = ARGV[A.NAME], [DETAIL.ENTRIES] = entries}
if ARGV[A.DEF_NAME] ~= '' then
  sub[DETAIL.DEFINITION] = {ARGV[A.DEF_NAME], tonumber(ARGV[A.DEF_VERSION]), ARGV[A.DEF_DIGEST]}
end
if fork ~= '' then
  redis.call('HSET', gk, META.FORKED_FROM, fork)
  sub[DETAIL.SOURCE] = fork
end
emit(gid, EventKind.GRAPH_SUBMITTED, nil, nil, nil, jstr(sub))
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
