-- Requeues or drops one dead letter, fenced on its node still waiting for exactly it
-- (graph not finished, node DEAD_LETTERED at the dead letter's attempt and iteration, and
-- the node's NODE.DEAD_LETTER naming this entry).
-- Returns {outcome, graph_id}: requeue -> requeued | stale | missing;
-- drop -> failed (the node and so the graph failed) | dropped (it was stale) | missing.
local A = ARG.DEADLETTER
local op, did = ARGV[A.OP], ARGV[A.ENTRY_ID]
local entry = redis.call('XRANGE', K_DEAD, did, did)
if #entry == 0 then return {'missing', ''} end
local f = {}
local fields = entry[1][2]
for k = 1, #fields, 2 do f[fields[k]] = fields[k + 1] end
local gid, node, attempt, iter = f[WORK.GRAPH], f[WORK.NODE], f[WORK.ATTEMPT], f[WORK.ITERATION]
local nk = hkey(gid, node)
local current = false
if fence(gid, node, attempt, iter, {NodeState.DEAD_LETTERED}) then
  current = redis.call('HGET', nk, node .. NODE.DEAD_LETTER) == did
end
if op == 'requeue' then
  if not current then return {'stale', gid} end
  redis.call('XDEL', K_DEAD, did)
  redis.call('HDEL', nk, node .. NODE.DEAD_LETTER)
  emit(gid, EventKind.NODE_REQUEUED, node, attempt, iter, jstr({[DETAIL.DEAD_LETTER] = did}))
  -- The same attempt runs again on a fresh work item (its delivery count starts over), as
  -- its next execution: the last one is kept negated for start_batch.
  dispatch(gid, node, attempt, iter)
  local last = tonumber(redis.call('HGET', nk, node .. F_EXEC)) or 0
  node_set(gid, node, node .. F_EXEC, -math.abs(last))
  flush()
  return {'requeued', gid}
end
redis.call('XDEL', K_DEAD, did)
if not current then return {'dropped', gid} end
local err = err_json(ErrorClass.DEAD_LETTER, 'the work item was delivered ' .. f[DEAD_LETTER.DELIVERIES]
  .. ' times without finishing; an operator dropped its dead letter', false)
node_set(gid, node, node .. F_STATE, NodeState.FAILED, node .. F_ENDED, NOW, node .. NODE.ERROR, err)
redis.call('HDEL', nk, node .. NODE.DEAD_LETTER)
open_add(gid, -1)
emit(gid, EventKind.NODE_FAILED, node, attempt, iter, J.D_ERROR_FIRST .. err .. '}')
if Map.is_item(node) then Map.ended(gid, node, false, err) else fail_graph(gid, err, node) end
flush()
return {'failed', gid}
