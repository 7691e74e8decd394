-- Appends events a running attempt produced (LLM deltas, tool calls; ITEM.EVENT_ARG
-- items), fenced on the attempt's execution. Returns 1, or 0 when the execution is no
-- longer current (the caller should stop).
local A, E = ARG.APPEND, ITEM.EVENT_ARG
local gid, node, attempt, iter = ARGV[A.GRAPH_ID], ARGV[A.NODE], ARGV[A.ATTEMPT], ARGV[A.ITERATION]
if fence(gid, node, attempt, iter, {NodeState.RUNNING}) == nil
  or redis.call('HGET', hkey(gid, node), node .. F_EXEC) ~= ARGV[A.EXECUTION] then
  return 0
end
-- Streamed events (LLM deltas, tool calls) are what can grow without bound: past the
-- graph's event cap (DAGO_MAX_EVENTS_PER_GRAPH, fixed at submit) the graph fails.
local v = redis.call('HMGET', gkey(gid), META.SEQ, META.MAX_EVENTS)
local cap = tonumber(v[2])
local size = 0
for i = A.FIRST, #ARGV, E.SIZE do size = size + #ARGV[i + E.DETAIL] end
local over = nil
if cap and cap > 0 and tonumber(v[1]) + (#ARGV - A.FIRST + 1) / E.SIZE > cap then
  over = 'the graph would record more than ' .. cap .. ' events (the limit is DAGO_MAX_EVENTS_PER_GRAPH)'
elseif not bytes_fit(gid, size) then
  over = 'its events would take the run past its limit of ' .. gbytes[gid][2]
    .. ' stored bytes (DAGO_MAX_RUN_BYTES)'
end
if over then
  fail_graph(gid, err_json(ErrorClass.LIMIT, over, false), node)
  flush()
  return 0
end
for i = A.FIRST, #ARGV, E.SIZE do emit(gid, ARGV[i + E.KIND], node, attempt, iter, ARGV[i + E.DETAIL]) end
flush()
return 1
