-- A map node's first start evaluated its items (ExpandArgs, then each item's value as
-- JSON), fenced as apply is on (graph, node, iteration, attempt, execution): stores the
-- items (<map>#<i>:v:o) and the map's counts and spec, parks the map node (it stays RUNNING
-- with no work item: its work item is acked and its attempt timeout is off the timers, so it
-- holds no slot), appends map_progress and dispatches the first min(max_concurrency, N)
-- items (map.lua). An empty list finishes the map at once. Items past the run's byte limit
-- fail the map node (LIMIT). Returns 1, or 0 when the report was stale.
local A = ARG.EXPAND
local gid, node, attempt, iter = ARGV[A.GRAPH_ID], ARGV[A.NODE], ARGV[A.ATTEMPT], ARGV[A.ITERATION]
local exec, mid = ARGV[A.EXECUTION], ARGV[A.MSG_ID]
local v = running_exec(gid, node, attempt, iter, exec)
if v == nil then
  ack_all({mid})
  flush()
  return 0
end
end_attempt_timer(gid, node, iter, attempt, v)
local n = #ARGV - A.FIRST + 1
local size = 0
for j = A.FIRST, #ARGV do size = size + #ARGV[j] end
if not bytes_fit(gid, size + #ARGV[A.INPUT]) then
  local err = err_json(ErrorClass.LIMIT, 'map.items: ' .. n .. ' items of ' .. size
    .. ' bytes would take the run past its limit of stored bytes (DAGO_MAX_RUN_BYTES)', false)
  local rec = J.REC_STARTED .. (v[4] or NOW_S) .. J.REC_ENDED .. NOW_S .. J.REC_STATE .. NodeStateText.FAILED
    .. J.REC_WORKER .. jstr(ARGV[A.WORKER]) .. J.REC_ERROR .. err .. '}'
  attempt_failed(gid, node, attempt, iter, err, nil, record_key(node, iter, attempt, exec), rec, nil)
  ack_all({mid})
  flush()
  return 1
end
local ik = hkey(gid, node .. MAP_ITEMS.SEP)
for k = A.FIRST, #ARGV, 500 do
  local args = {}
  for j = k, math.min(k + 499, #ARGV) do
    args[#args + 1] = node .. MAP_ITEMS.SEP .. int(j - A.FIRST) .. MAP_ITEMS.VALUE_REF .. NODE.OUTPUT
    args[#args + 1] = ARGV[j]
  end
  redis.call('HSET', ik, unpack(args))
end
-- The run's maps (META.MAPS), so their item hashes expire with the run's other keys.
local maps = redis.call('HGET', gkey(gid), META.MAPS) or ''
if not string.find(',' .. maps .. ',', ',' .. node .. ',', 1, true) then
  redis.call('HSET', gkey(gid), META.MAPS, maps == '' and node or (maps .. ',' .. node))
end
local conc = tonumber(ARGV[A.MAX_CONCURRENCY])
node_set(gid, node, node .. MAP_ITEMS.TOTAL, n, node .. MAP_ITEMS.NEXT, 0, node .. MAP_ITEMS.RUNNING, 0,
  node .. MAP_ITEMS.COMPLETED, 0, node .. MAP_ITEMS.FAILED, 0, node .. MAP_ITEMS.CANCELLED, 0,
  node .. MAP_ITEMS.SPEC, conc .. '|' .. ARGV[A.ON_FAILURE] .. '|' .. ARGV[A.MAX_FAILURES] .. '|' .. ARGV[A.BODY_PLAN])
ack_all({mid})
-- A fork's reused items complete now (Map.reuse): when every item was, the map finishes.
if n == Map.reuse(gid, node, iter) then
  Map.finish(gid, node, nil, nil)
else
  Map.progress(gid, node, true)
  Map.dispatch_next(gid, node, conc)
end
flush()
return 1
