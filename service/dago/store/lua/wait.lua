-- Puts wait nodes into WAITING (ITEM.WAITING items: attempts whose worker found no decision
-- recorded for their iteration), fenced as apply is on (graph, node, iteration, attempt,
-- execution): the execution's record ends WAITING, the wait (schema.Wait) is kept with the
-- node, node_waiting is appended, the node enters its namespace's inbox on the shard
-- (Waits.index) by when it started waiting, its timeout goes on the timers, and the work
-- item is acked: a waiting node holds no worker slot and no pending item.
-- An agent waiting for the approval of a tool call (one wait per call, Wait.STEP the call's
-- id) also passes its conversation (Waiting.saved), kept in <node>:c:o for its next start.
-- Returns per item the node's state (WAITING, or UNSPECIFIED when the item was stale).
local A, W = ARG.WAIT, ITEM.WAITING
local worker = ARGV[A.WORKER]
local out, acks = {}, {}
for i = A.FIRST, #ARGV, W.SIZE do
  local mid, gid, node = ARGV[i + W.MSG_ID], ARGV[i + W.GRAPH_ID], ARGV[i + W.NODE]
  local attempt, iter, exec = ARGV[i + W.ATTEMPT], ARGV[i + W.ITERATION], ARGV[i + W.EXECUTION]
  local v = running_exec(gid, node, attempt, iter, exec)
  if v == nil then
    out[#out + 1] = NodeState.UNSPECIFIED
  else
    -- The attempt's own timeout is over: it waits for a person now, not for a worker.
    end_attempt_timer(gid, node, iter, attempt, v)
    local timeout = tonumber(ARGV[i + W.TIMEOUT_MS]) or 0
    local deadline = 0
    if timeout > 0 then
      deadline = NOW + timeout
      redis.call('ZADD', K_TIMERS, deadline, Waits.timer(gid, node, iter))
    end
    -- The worker's JSON (prompt, display, decisions, schema, timeout decision) with the
    -- iteration and the times added, kept as it came (no decode: cjson would turn [] into {}).
    local spec = ARGV[i + W.WAIT]
    local wjson = string.sub(spec, 1, -2) .. ',"' .. WAIT.ITERATION .. '":' .. iter
      .. ',"' .. WAIT.SINCE .. '":' .. NOW_S .. ',"' .. WAIT.DEADLINE .. '":' .. int(deadline) .. '}'
    local input = ARGV[i + W.INPUT]
    local rec = J.REC_STARTED .. (v[4] or NOW_S) .. J.REC_ENDED .. NOW_S .. J.REC_STATE .. NodeStateText.WAITING
      .. J.REC_WORKER .. jstr(worker)
    if input ~= '' then rec = rec .. J.REC_INPUT .. input end
    rec = rec .. '}'
    local saved = ARGV[i + W.SAVED]
    bytes_fit(gid, #input + 2 * #wjson + #saved)
    -- The execution's number is kept negated: the start after a decision is the next one.
    node_set(gid, node, node .. F_STATE, NodeStateText.WAITING, node .. NODE.WAIT, wjson,
      record_key(node, iter, attempt, exec), rec, node .. F_EXEC, '-' .. exec)
    -- What an agent keeps while it waits (its conversation): read by its next start.
    if saved ~= '' then node_set(gid, node, node .. NODE.SAVED_REF .. NODE.OUTPUT, saved) end
    local ns = redis.call('HGET', gkey(gid), META.NAMESPACE)
    if redis.call('ZADD', Waits.index(ns), NOW, gid .. '|' .. node) == 1 then
      redis.call('HINCRBY', K_STATS, STATS.WAITING, 1)
    end
    -- Its details are the wait itself (schema.Detail names the same keys as schema.Wait).
    emit(gid, EventKind.NODE_WAITING, node, attempt, iter, wjson)
    out[#out + 1] = NodeState.WAITING
  end
  acks[#acks + 1] = mid
end
ack_all(acks)
flush()
return out
