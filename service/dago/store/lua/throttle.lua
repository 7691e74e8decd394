-- Puts attempts a model rate limit refused back in QUEUED (ITEM.THROTTLED_ATTEMPT items: the
-- worker's model call found no room in its model's bucket), fenced as wait is on (graph,
-- node, iteration, attempt, execution): the execution's record ends QUEUED (it made no
-- call), node_throttled is appended, the node keeps its attempt (throttling is not a
-- failure: the retry policy's max_attempts is untouched) with its execution number kept
-- negated (the next start is the next execution), its not-before time is written
-- (NODE.THROTTLED) and put on the shard's timers (TIMER.THROTTLE, which dispatches the
-- same attempt again), and the work item is acked: a throttled node holds no worker slot
-- and no pending item. Returns per item the node's state (QUEUED, or UNSPECIFIED when
-- the item was stale).
local A, T = ARG.THROTTLE, ITEM.THROTTLED_ATTEMPT
local worker = ARGV[A.WORKER]
local out, acks = {}, {}
for i = A.FIRST, #ARGV, T.SIZE do
  local mid, gid, node = ARGV[i + T.MSG_ID], ARGV[i + T.GRAPH_ID], ARGV[i + T.NODE]
  local attempt, iter, exec = ARGV[i + T.ATTEMPT], ARGV[i + T.ITERATION], ARGV[i + T.EXECUTION]
  local v = running_exec(gid, node, attempt, iter, exec)
  if v == nil then
    out[#out + 1] = NodeState.UNSPECIFIED
  else
    end_attempt_timer(gid, node, iter, attempt, v)
    local at = NOW + math.max(1, tonumber(ARGV[i + T.WAIT_MS]) or 0)
    local input = ARGV[i + T.INPUT]
    local rec = J.REC_STARTED .. (v[4] or NOW_S) .. J.REC_ENDED .. NOW_S .. J.REC_STATE .. S_QUEUED
      .. J.REC_WORKER .. jstr(worker)
    if input ~= '' then rec = rec .. J.REC_INPUT .. input end
    rec = rec .. '}'
    bytes_fit(gid, #input)
    node_set(gid, node, node .. F_STATE, S_QUEUED, node .. NODE.THROTTLED, int(at),
      record_key(node, iter, attempt, exec), rec, node .. F_EXEC, '-' .. exec)
    redis.call('ZADD', K_TIMERS, at, timer_key(TIMER.THROTTLE, gid, node, iter, attempt))
    emit(gid, EventKind.NODE_THROTTLED, node, attempt, iter, ARGV[i + T.DETAIL])
    out[#out + 1] = NodeState.QUEUED
  end
  acks[#acks + 1] = mid
end
ack_all(acks)
flush()
return out
