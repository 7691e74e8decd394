-- Child runs (docs/semantics.md, "Sub-graphs"). A subgraph node's attempt starts its child
-- run and parks the node (the `spawn` function): WAITING, its work item acked, so it holds
-- no slot and no pending item while the child runs. The child lives on the parent's shard,
-- so its end and the effect on its parent are one call: end_graph (core.lua) calls
-- Child.ended, which records the child's outcome for the parent node run where a wait
-- node's decision goes (`<node>:w:o`, schema.ChildOutcome) and queues the node again; the
-- worker's next start reads it and completes (or fails) the node through `apply`, so the
-- output mapping, the edge conditions, the usage roll-up and the retry rule are where every
-- other node's are. Ending a run cancels the children its waiting nodes run (Child.cancel).

-- A child run ended (from end_graph): when its parent node run still waits for it, its
-- outcome (state, the outputs of its completed nodes, usage, error) is recorded for that
-- node run and the node is queued again. A parent that ended, or moved on, changes nothing.
function Child.ended(gid, state)
  local link = redis.call('HGET', gkey(gid), META.PARENT)
  if not link then return end
  local pid, node, iter, attempt = string.match(link, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|')
  local gs = graph_state(pid)
  if gs == nil or gs >= GraphState.COMPLETED then return end
  local v = redis.call('HMGET', hkey(pid, node), node .. F_STATE, node .. F_ATTEMPT, node .. F_ITER,
    node .. NODE.CHILD, node .. F_EXEC)
  if v[1] ~= NodeStateText.WAITING or v[2] ~= attempt or v[3] ~= iter or v[4] ~= gid then return end
  local outs = '{}'
  if state == GraphState.COMPLETED then
    local ids = cjson.decode(redis.call('HGET', gkey(gid), META.NODE_IDS))
    local parts = {}
    for k = 1, #ids, 500 do
      local fields = {}
      for j = k, math.min(k + 499, #ids) do
        fields[#fields + 1] = ids[j] .. F_STATE
        fields[#fields + 1] = ids[j] .. NODE.OUTPUT
      end
      local o = redis.call('HMGET', nkey(gid), unpack(fields))
      for j = 1, #fields, 2 do
        if o[j] == S_COMPLETED and o[j + 1] then
          parts[#parts + 1] = jstr(ids[k + (j - 1) / 2]) .. ':' .. o[j + 1]
        end
      end
    end
    outs = '{' .. table.concat(parts, ',') .. '}'
  end
  local gk = gkey(gid)
  local err = redis.call('HGET', gk, META.ERROR)
  local rec = '{"' .. CHILD_OUTCOME.ITERATION .. '":' .. iter .. ',"' .. CHILD_OUTCOME.ATTEMPT .. '":' .. attempt
    .. ',"' .. CHILD_OUTCOME.GRAPH .. '":' .. jstr(gid) .. ',"' .. CHILD_OUTCOME.STATE .. '":' .. int(state)
    .. ',"' .. CHILD_OUTCOME.OUTPUTS .. '":' .. outs .. ',"' .. CHILD_OUTCOME.USAGE .. '":' .. usage_json(gk)
  if err then rec = rec .. ',"' .. CHILD_OUTCOME.ERROR .. '":' .. err end
  rec = rec .. '}'
  bytes_fit(pid, #rec)
  emit(pid, EventKind.CHILD_ENDED, node, attempt, iter,
    jstr({[DETAIL.CHILD] = gid, [DETAIL.CHILD_STATE] = state}))
  -- The outcome first, then the work item: the start that reads it is this attempt's next
  -- execution (the parked one's number is kept negated, as for a wait node).
  node_set(pid, node, node .. NODE.DECISION_REF .. NODE.OUTPUT, rec)
  local last = tonumber(v[5]) or 0
  dispatch(pid, node, attempt, iter)
  node_set(pid, node, node .. F_EXEC, -math.abs(last))
end

-- A run ends with `node` waiting: the child run the node waits for (and so its own
-- children) is cancelled in the same call.
function Child.cancel(gid, node)
  local c = redis.call('HGET', hkey(gid, node), node .. NODE.CHILD)
  if not c then return end
  local cs = graph_state(c)
  if cs == nil or cs >= GraphState.COMPLETED then return end
  local why = 'its parent run ' .. gid .. ' ended'
  end_graph(c, GraphState.CANCELLED, EventKind.GRAPH_CANCELLED, reason_json(why),
    err_json(ErrorClass.UNSPECIFIED, 'cancelled: ' .. why, false))
end

-- A run ended other than completed: every child run of it still running is cancelled,
-- the children of its map's items (a graph body, whose items wait in their map's item
-- hash, not among the run's nodes) as well as those of its waiting nodes.
function Child.cancel_all(gid)
  local kids = redis.call('ZRANGE', gkey(gid) .. ':c', 0, -1)
  local why = 'its parent run ' .. gid .. ' ended'
  for _, c in ipairs(kids) do
    local cs = graph_state(c)
    if cs ~= nil and cs < GraphState.COMPLETED then
      end_graph(c, GraphState.CANCELLED, EventKind.GRAPH_CANCELLED, reason_json(why),
        err_json(ErrorClass.UNSPECIFIED, 'cancelled: ' .. why, false))
    end
  end
end

-- Creates child run `cid` of node run (pid, node, iter, attempt, exec, instance) from the
-- `spawn` arguments (A: ARG.SPAWN), as submit.lua creates a run (create_run), with what it
-- takes from its parent (INHERITED): namespace, priority, retention, event and byte limits,
-- archiving, trace; its deadline the sooner of its own and the parent's. `depth`: its
-- nesting level.
local INHERITED = {META.RETENTION, META.MAX_EVENTS, META.MAX_BYTES, META.ARCHIVE, META.TRACEPARENT,
  META.PRIORITY}
function Child.create(cid, pid, node, iter, attempt, exec, depth, A)
  local pk = gkey(pid)
  local pm = redis.call('HMGET', pk, META.NAMESPACE, unpack(INHERITED))
  local link = pid .. '|' .. node .. '|' .. iter .. '|' .. attempt .. '|' .. exec .. '|' .. ARGV[A.INSTANCE]
  local meta = {META.REQUEST_ID, '', META.PARENT, link, META.PARENT_GRAPH, pid, META.PARENT_NODE, node,
    META.DEPTH, depth}
  for k, f in ipairs(INHERITED) do
    if pm[k + 1] then meta[#meta + 1] = f; meta[#meta + 1] = pm[k + 1] end
  end
  local entries = create_run(cid, A, ARGV[A.INPUT], pm[1] or 'default', meta, {})
  redis.call('ZADD', pk .. ':c', NOW, cid)
  for _, n in ipairs(entries) do dispatch(cid, n, '1', '1') end
  local at = 0
  local own = tonumber(ARGV[A.DEADLINE_MS]) or 0
  if own > 0 then at = NOW + own end
  local theirs = tonumber(redis.call('ZSCORE', K_TIMERS, TIMER.DEADLINE .. '|' .. pid))
  if theirs and (at == 0 or theirs < at) then at = theirs end
  if at > 0 then redis.call('ZADD', K_TIMERS, at, TIMER.DEADLINE .. '|' .. cid) end
end
