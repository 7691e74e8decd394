-- Requeues or drops one dead letter, fenced on its node still waiting for exactly it
-- (graph not finished, node DEAD_LETTERED at the dead letter's attempt and iteration, and
-- the node's ':dl' naming this entry).
-- ARGV: tag, op (requeue|drop), dead-letter stream entry id.
-- Returns {outcome, graph_id}: requeue -> requeued | stale | missing;
-- drop -> failed (the node and so the graph failed) | dropped (it was stale) | missing.
local op, did = ARGV[2], ARGV[3]
local entry = redis.call('XRANGE', DEAD, did, did)
if #entry == 0 then return {'missing', ''} end
local f = {}
local fields = entry[1][2]
for k = 1, #fields, 2 do f[fields[k]] = fields[k + 1] end
local gid, node = f.g, f.n
local nk = nkey(gid)
local current = false
if fence(gid, node, f.a, f.i, {DEAD_LETTERED}) then
  current = redis.call('HGET', nk, node .. ':dl') == did
end
if op == 'requeue' then
  if not current then return {'stale', gid} end
  redis.call('XDEL', DEAD, did)
  redis.call('HDEL', nk, node .. ':dl')
  emit(gid, 'node_requeued', node, f.a, f.i, jstr({id = did}))
  -- The same attempt runs again on a fresh work item: its delivery count starts over.
  dispatch(gid, node, tonumber(f.a), tonumber(f.i))
  flush()
  return {'requeued', gid}
end
redis.call('XDEL', DEAD, did)
if not current then return {'dropped', gid} end
local err = jstr({c = 6, m = 'the work item was delivered ' .. f.deliveries .. ' times without finishing; an operator dropped its dead letter', r = false})
redis.call('HSET', nk, node .. ':s', FAILED, node .. ':et', NOW, node .. ':err', err)
redis.call('HDEL', nk, node .. ':dl')
redis.call('HINCRBY', gkey(gid), 'open', -1)
emit(gid, 'node_failed', node, f.a, f.i, '{"e":' .. err .. '}')
fail_graph(gid, err, node)
flush()
return {'failed', gid}
