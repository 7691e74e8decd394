-- Wait nodes (docs/semantics.md, "Waits and signals"). A wait node's attempt runs on a
-- worker like any other; when no decision is recorded for its iteration, the worker reports
-- what to wait for (the `wait` function) instead of a result, and the node enters WAITING:
-- its work item is acked, so it holds no slot and no pending item, and its timeout is on the
-- shard's timers. A decision (the `signal` function, or the timeout found by `sweep`) is
-- recorded in the node's `<node>:w:o` field and the node goes back to QUEUED with a fresh
-- work item: the worker's next start reads the decision (schema.Node.DECISION_REF) and
-- completes the node through `apply`, so the output mapping and the edge conditions are
-- evaluated where every other node's are.

-- Records `decision` for a waiting node's iteration and sends the node back to the
-- workers. `payload` is JSON text (the API checked it), `timed_out` a boolean; `w` is the
-- node's stored wait (schema.Wait, decoded). Returns the decision record (schema.Decision).
function Waits.decide(gid, node, attempt, iter, w, decision, payload, actor, sid, comment, timed_out)
  if payload == '' then payload = 'null' end
  local rec = '{"' .. DECISION.ITERATION .. '":' .. iter
    .. ',"' .. DECISION.DECISION .. '":' .. jstr(decision)
    .. ',"' .. DECISION.PAYLOAD .. '":' .. payload
    .. ',"' .. DECISION.ACTOR .. '":' .. jstr(actor)
    .. ',"' .. DECISION.AT .. '":' .. NOW_S
    .. ',"' .. DECISION.SIGNAL_ID .. '":' .. jstr(sid)
    .. ',"' .. DECISION.COMMENT .. '":' .. jstr(comment)
    .. ',"' .. DECISION.TIMED_OUT .. '":' .. (timed_out and 'true' or 'false')
    .. ',"' .. DECISION.SINCE .. '":' .. int(tonumber(w[WAIT.SINCE]) or NOW)
    .. ',"' .. DECISION.STEP .. '":' .. jstr(w[WAIT.STEP] or '') .. '}'
  local ev = '{"' .. DETAIL.DECISION .. '":' .. jstr(decision)
    .. ',"' .. DETAIL.PAYLOAD .. '":' .. payload
    .. ',"' .. DETAIL.ACTOR .. '":' .. jstr(actor)
    .. ',"' .. DETAIL.SIGNAL_ID .. '":' .. jstr(sid)
    .. ',"' .. DETAIL.COMMENT .. '":' .. jstr(comment)
    .. ',"' .. DETAIL.TIMED_OUT .. '":' .. (timed_out and 'true' or 'false') .. '}'
  bytes_fit(gid, #rec + #ev)
  Waits.clear(gid, node, iter)
  emit(gid, EventKind.SIGNAL_RECEIVED, node, attempt, iter, ev)
  -- The decision first, then the work item: the start that reads it is this attempt's next
  -- execution (kept negated for start_batch, as a requeued dead letter's).
  node_set(gid, node, node .. NODE.DECISION_REF .. NODE.OUTPUT, rec)
  local last = tonumber(redis.call('HGET', nkey(gid), node .. F_EXEC)) or 0
  dispatch(gid, node, attempt, iter)
  node_set(gid, node, node .. F_EXEC, -math.abs(last))
  return rec
end

-- The wait's timeout (a TIMER.WAIT member found by sweep): when the node still waits in that
-- iteration, its timeout_decision is recorded, by the actor `timeout`. A signal that won
-- first took the timer away; one that comes after finds the node decided.
function Waits.timed_out(gid, node, iter)
  local gs = graph_state(gid)
  if gs == nil or gs >= GraphState.COMPLETED then return end
  local v = redis.call('HMGET', nkey(gid), node .. F_STATE, node .. F_ATTEMPT, node .. F_ITER, node .. NODE.WAIT)
  if v[1] ~= NodeStateText.WAITING or v[3] ~= iter or not v[4] then return end
  local w = cjson.decode(v[4])
  -- No signal_id: no signal can replay it (the API always sends one).
  Waits.decide(gid, node, v[2], iter, w, w[WAIT.TIMEOUT_DECISION], '', 'timeout', '', '', true)
end
