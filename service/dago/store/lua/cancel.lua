-- Cancels a graph. Returns {'cancelled', state} (also when it already was: a client retry
-- must not fail once the first call won) | {'finished', state} | {'missing', 0}.
local A = ARG.CANCEL
local gid = ARGV[A.GRAPH_ID]
local st = tonumber(redis.call('HGET', gkey(gid), META.STATE))
if st == nil then return {'missing', 0} end
if st == GraphState.CANCELLED then return {'cancelled', st} end
if st >= GraphState.COMPLETED then return {'finished', st} end
end_graph(gid, GraphState.CANCELLED, EventKind.GRAPH_CANCELLED, reason_json(ARGV[A.REASON]),
  err_json(ErrorClass.UNSPECIFIED, 'cancelled: ' .. ARGV[A.REASON], false))
flush()
return {'cancelled', GraphState.CANCELLED}
