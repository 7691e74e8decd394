-- Starts a subgraph node's child run and parks the node (schema.Spawning; children.lua),
-- fenced as apply is on (graph, node, iteration, attempt, execution). The attempt's child is
-- recorded on the node (schema.Node.CHILD): a call for an attempt that has one finds it and
-- starts no other. The node goes to WAITING (its execution's record ends WAITING, its number
-- kept negated: the start after the child's end is the next one) and its work item is
-- acked: a node whose child runs holds no worker slot and no pending item. A child nested
-- deeper than the worker's DAGO_MAX_GRAPH_DEPTH fails the attempt instead (not retried).
-- The child records its root run (META.ROOT), whose budget its model calls charge.
-- Returns {'created' | 'exists' | 'stale' | 'too_deep', child id}.
local A = ARG.SPAWN
local worker, mid = ARGV[A.WORKER], ARGV[A.MSG_ID]
local pid, node, attempt, iter, exec = ARGV[A.GRAPH_ID], ARGV[A.NODE], ARGV[A.ATTEMPT], ARGV[A.ITERATION], ARGV[A.EXECUTION]
local v = running_exec(pid, node, attempt, iter, exec)
if v == nil then
  ack_all({mid})
  return {'stale', ''}
end
-- The attempt's own timeout is over: it waits for its child now, not for a worker.
end_attempt_timer(pid, node, iter, attempt, v)
local input = ARGV[A.INPUT]
local rk = record_key(node, iter, attempt, exec)
local depth = (tonumber(redis.call('HGET', gkey(pid), META.DEPTH)) or 0) + 1
local max_depth = tonumber(ARGV[A.MAX_DEPTH])
if depth > max_depth then
  local err = err_json(ErrorClass.PERMANENT, 'the child run would be nested ' .. depth
    .. ' deep, past the limit of ' .. max_depth .. ' (DAGO_MAX_GRAPH_DEPTH)', false)
  local rec = J.REC_STARTED .. (v[4] or NOW_S) .. J.REC_ENDED .. NOW_S .. J.REC_STATE .. NodeStateText.FAILED
    .. J.REC_WORKER .. jstr(worker) .. J.REC_INPUT .. input .. J.REC_ERROR .. err .. '}'
  attempt_failed(pid, node, attempt, iter, err, nil, rk, rec, nil)
  ack_all({mid})
  flush()
  return {'too_deep', ''}
end
local ck = node .. NODE.CHILD .. iter .. ':' .. attempt
local child = redis.call('HGET', hkey(pid, node), ck)
local outcome = 'exists'
if not child then
  child = ARGV[A.CHILD_ID]
  outcome = 'created'
  bytes_fit(pid, #input)
  Child.create(child, pid, node, iter, attempt, exec, depth, A)
  -- Its model calls charge its root run's budget (the root of its parent: Budget.root).
  redis.call('HSET', gkey(child), META.ROOT, Budget.root(pid))
  emit(pid, EventKind.CHILD_STARTED, node, attempt, iter, jstr({[DETAIL.CHILD] = child}))
end
local rec = J.REC_STARTED .. (v[4] or NOW_S) .. J.REC_ENDED .. NOW_S .. J.REC_STATE .. NodeStateText.WAITING
  .. J.REC_WORKER .. jstr(worker) .. J.REC_INPUT .. input .. '}'
node_set(pid, node, node .. F_STATE, NodeStateText.WAITING, node .. NODE.CHILD, child, ck, child,
  rk, rec, node .. F_EXEC, '-' .. exec)
-- A child that ended already (its parent node was not parked yet: never, as the child is
-- made here; kept so an attempt can never wait for a child that will not call back).
local cs = graph_state(child)
if cs ~= nil and cs >= GraphState.COMPLETED then Child.ended(child, cs) end
ack_all({mid})
flush()
return {outcome, child}
