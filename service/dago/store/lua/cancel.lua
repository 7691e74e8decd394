-- Cancels a graph. ARGV: tag, gid, reason.
-- Returns {'cancelled', state} (also when it already was) | {'finished', state} | {'missing', 0}.
local gid = ARGV[2]
local st = tonumber(redis.call('HGET', gkey(gid), 'state'))
if st == nil then return {'missing', 0} end
-- Cancelling twice is not an error (a client retry must not fail once the first call won).
if st == G_CANCELLED then return {'cancelled', st} end
if st >= G_COMPLETED then return {'finished', st} end
end_graph(gid, G_CANCELLED, 'graph_cancelled', jstr({reason = ARGV[3]}),
  jstr({c = 0, m = 'cancelled: ' .. ARGV[3], r = false}))
flush()
return {'cancelled', G_CANCELLED}
