-- Takes over the pending work items named (ITEM.CLAIM) that are still idle past
-- min_idle_ms: their consumer stopped renewing them (a dead or hung worker, or the caller
-- itself under an earlier process), and starts them for `worker` as their next execution.
-- The caller chooses them (it leaves out what it runs itself); the idle check here makes
-- the choice safe against a renewal or another worker's reclaim since.
-- Items delivered more than max_deliveries times go to the dead-letter stream instead;
-- their node waits there (DEAD_LETTERED, the graph stays running) until an operator
-- requeues or drops it (deadletter.lua).
-- Returns the items started (as start_batch returns them).
local A, C = ARG.RECLAIM, ITEM.CLAIM
local worker, maxd, idle = ARGV[A.WORKER], tonumber(ARGV[A.MAX_DELIVERIES]), ARGV[A.MIN_IDLE_MS]
local items = {}
for i = A.FIRST, #ARGV, C.SIZE do
  local mid = ARGV[i + C.MSG_ID]
  local claimed = redis.call('XCLAIM', K_WORK, GROUP, worker, idle, mid)
  local m = claimed[1]
  if m then
    local pend = redis.call('XPENDING', K_WORK, GROUP, mid, mid, 1)
    local n = (pend[1] and tonumber(pend[1][4])) or 1
    local it = work_item(m, int(n))
    if n <= maxd then
      items[#items + 1] = it
    else
      local gid, node, attempt, iter = it[2], it[3], it[4], it[5]
      Fair.done({mid}, redis.call('XACK', K_WORK, GROUP, mid))
      if fence(gid, node, attempt, iter, {NodeState.QUEUED, NodeState.RUNNING}) then
        local err = err_json(ErrorClass.DEAD_LETTER, 'the work item was delivered ' .. n
          .. ' times without finishing and was moved to the dead-letter list (requeue or drop it)', false)
        local did = redis.call('XADD', K_DEAD, 'MAXLEN', '~', 100000, '*', WORK.GRAPH, gid, WORK.NODE, node,
          WORK.ATTEMPT, attempt, WORK.ITERATION, iter, DEAD_LETTER.ENTRY, mid, DEAD_LETTER.DELIVERIES, n,
          DEAD_LETTER.TIME, NOW, DEAD_LETTER.ERROR, err)
        -- The execution that did not finish ends with the dead letter.
        local v = redis.call('HMGET', hkey(gid, node), node .. F_STATE, node .. F_STARTED, node .. F_EXEC, node .. F_WORKER)
        if v[1] == S_RUNNING and v[3] then
          node_set(gid, node, record_key(node, iter, attempt, v[3]),
            short_record(v[2], NOW_S, NodeStateText.DEAD_LETTERED, v[4]))
          stop_work(gid, node, attempt, v[3])
        end
        node_set(gid, node, node .. F_STATE, NodeState.DEAD_LETTERED, node .. NODE.ERROR, err, node .. NODE.DEAD_LETTER, did)
        redis.call('ZREM', K_TIMERS, timer_key(TIMER.TIMEOUT, gid, node, iter, attempt))
        redis.call('HINCRBY', K_STATS, STATS.DEAD, 1)
        emit(gid, EventKind.NODE_DEAD_LETTERED, node, attempt, iter,
          J.D_ERROR_FIRST .. err .. J.D_NEXT .. n .. J.D_DEAD .. jstr(did) .. '}')
      end
    end
  elseif #redis.call('XPENDING', K_WORK, GROUP, 'IDLE', idle, mid, mid, 1) > 0 then
    -- Still pending and idle, yet not claimed: trimmed from the stream, nothing left to run.
    Fair.done({mid}, redis.call('XACK', K_WORK, GROUP, mid))
  end
end
local started = {}
if #items > 0 then
  redis.call('HINCRBY', K_STATS, STATS.RECLAIMED, #items)
  started = start_batch(worker, items, tonumber(ARGV[A.LEASE_MS]))
end
flush()
return started
