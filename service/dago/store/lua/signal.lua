-- Records a decision sent to a wait node (SignalGraph), atomically: the first valid
-- decision of an iteration wins. In this order:
--   the same signal_id as the recorded decision: {'replay', state, record} (a client's
--     retry gets the first answer, whatever happened since);
--   the graph ended: {'ended', graph state, record or ''} (the record of the node's last
--     decision, if any: who decided);
--   the iteration already decided (by another signal or the timeout): {'conflict', state,
--     record};
--   the node is not waiting in that iteration (early: it has not started waiting; late: it
--     was skipped or cancelled, or the loop moved on): {'not_waiting', state, iteration};
--   else the decision is recorded (Waits.decide): {'recorded', state, record}.
-- {'missing', 0, ''} when Redis holds no such graph. A probe (SignalArgs.probe) records
-- nothing: past the conflict check it answers {'valid', state, ''} (the API asks when it
-- found the decision or payload invalid: a decided wait tells the client it lost first). The API checked the decision and the
-- payload against the node's definition before calling.
local A = ARG.SIGNAL
local gid, node = ARGV[A.GRAPH_ID], ARGV[A.NODE]
local sid = ARGV[A.SIGNAL_ID]
local gs = tonumber(redis.call('HGET', gkey(gid), META.STATE))
if gs == nil then return {'missing', 0, ''} end
local v = redis.call('HMGET', nkey(gid), node .. F_STATE, node .. F_ATTEMPT, node .. F_ITER,
  node .. NODE.DECISION_REF .. NODE.OUTPUT, node .. NODE.WAIT)
local st, iter = tonumber(v[1]) or NodeState.PENDING, v[3] or '1'
local target = ARGV[A.ITERATION]
if target == '0' then target = iter end
local rec = v[4] and cjson.decode(v[4])
if rec and sid ~= '' and rec[DECISION.SIGNAL_ID] == sid then return {'replay', st, v[4]} end
if gs >= GraphState.COMPLETED then return {'ended', gs, v[4] or ''} end
if rec and tostring(rec[DECISION.ITERATION]) == target then return {'conflict', st, v[4]} end
if ARGV[A.PROBE] == '1' then return {'valid', st, ''} end
if st ~= NodeState.WAITING or target ~= iter or not v[5] then return {'not_waiting', st, iter} end
local r = Waits.decide(gid, node, v[2], iter, cjson.decode(v[5]), ARGV[A.DECISION], ARGV[A.PAYLOAD],
  ARGV[A.ACTOR], sid, ARGV[A.COMMENT], false)
flush()
return {'recorded', st, r}
