-- Appends events a running attempt produced (LLM deltas, tool calls), fenced on the attempt.
-- ARGV: tag, gid, node, attempt, iter, then type/detail pairs. Returns 1, or 0 when the
-- attempt is no longer current (the caller should stop).
local gid, node, attempt, iter = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if fence(gid, node, attempt, iter, {RUNNING}) == nil then return 0 end
-- Streamed events (LLM deltas, tool calls) are what can grow without bound: past the
-- graph's event cap (DAGO_MAX_EVENTS_PER_GRAPH, fixed at submit) the graph fails.
local v = redis.call('HMGET', gkey(gid), 'seq', 'max_events')
local cap = tonumber(v[2])
if cap and cap > 0 and tonumber(v[1]) + (#ARGV - 5) / 2 > cap then
  fail_graph(gid, jstr({c = 7, m = 'the graph would record more than ' .. cap ..
    ' events (the limit is DAGO_MAX_EVENTS_PER_GRAPH)', r = false}), node)
  flush()
  return 0
end
for i = 6, #ARGV, 2 do emit(gid, ARGV[i], node, attempt, iter, ARGV[i + 1]) end
flush()
return 1
