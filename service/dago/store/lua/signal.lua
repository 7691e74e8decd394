-- Records a decision sent to a wait node (SignalGraph), atomically: the first valid
-- decision of an iteration wins. In this order:
--   the same signal_id as the recorded decision: {'replay', state, record} (a client's
--     retry gets the first answer, whatever happened since);
--   the graph ended: {'ended', graph state, record or ''} (the record of the node's last
--     decision, if any: who decided);
--   the iteration's wait already decided (by another signal or the timeout): {'conflict',
--     state, record} (an agent waits once per tool call needing approval: its waits are
--     told apart by Wait.STEP, the call's id, which a signal may name);
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
-- The wait the signal is for: the step it names (an agent's tool call), else the one the
-- node waits on now; a wait node has one wait per iteration (step '').
local w = v[5] and cjson.decode(v[5])
local waiting = st == NodeState.WAITING and target == iter and w ~= nil
local now_step = waiting and (w[WAIT.STEP] or '') or nil
local want = ARGV[A.STEP]
if want == '' and now_step then want = now_step end
if rec and tostring(rec[DECISION.ITERATION]) == target
  and (want == '' or (rec[DECISION.STEP] or '') == want) then return {'conflict', st, v[4]} end
if ARGV[A.PROBE] == '1' then return {'valid', st, ''} end
if not waiting or want ~= now_step then return {'not_waiting', st, iter} end
local r = Waits.decide(gid, node, v[2], iter, w, ARGV[A.DECISION], ARGV[A.PAYLOAD],
  ARGV[A.ACTOR], sid, ARGV[A.COMMENT], false)
flush()
return {'recorded', st, r}
