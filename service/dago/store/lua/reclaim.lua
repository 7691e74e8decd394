-- Takes over work items whose consumer stopped renewing them (a dead or hung worker) and
-- starts them for `worker`. Items delivered more than max_deliveries times go to the
-- dead-letter stream instead; their node waits there (DEAD_LETTERED, the graph stays
-- running) until an operator requeues or drops it (deadletter.lua).
-- Returns the items started (as start_batch returns them).
local A = ARG.RECLAIM
local worker, maxd = ARGV[A.WORKER], tonumber(ARGV[A.MAX_DELIVERIES])
local res = redis.call('XAUTOCLAIM', K_WORK, GROUP, worker, ARGV[A.MIN_IDLE_MS], '0-0', 'COUNT', ARGV[A.MAX_ITEMS])
local items = {}
for _, m in ipairs(res[2]) do
  local mid = m[1]
  local pend = redis.call('XPENDING', K_WORK, GROUP, mid, mid, 1)
  local n = (pend[1] and tonumber(pend[1][4])) or 1
  local it = work_item(m, int(n))
  local gid, node, attempt, iter = it[2], it[3], it[4], it[5]
  if n <= maxd then
    items[#items + 1] = it
  else
    redis.call('XACK', K_WORK, GROUP, mid)
    if fence(gid, node, attempt, iter, {NodeState.QUEUED, NodeState.RUNNING}) then
      local err = err_json(ErrorClass.DEAD_LETTER, 'the work item was delivered ' .. n
        .. ' times without finishing and was moved to the dead-letter list (requeue or drop it)', false)
      local did = redis.call('XADD', K_DEAD, 'MAXLEN', '~', 100000, '*', WORK.GRAPH, gid, WORK.NODE, node,
        WORK.ATTEMPT, attempt, WORK.ITERATION, iter, DEAD_LETTER.ENTRY, mid, DEAD_LETTER.DELIVERIES, n,
        DEAD_LETTER.TIME, NOW, DEAD_LETTER.ERROR, err)
      node_set(gid, node, node .. F_STATE, NodeState.DEAD_LETTERED, node .. NODE.ERROR, err, node .. NODE.DEAD_LETTER, did)
      redis.call('ZREM', K_TIMERS, timer_key(TIMER.TIMEOUT, gid, node, iter, attempt))
      redis.call('HINCRBY', K_STATS, STATS.DEAD, 1)
      emit(gid, EventKind.NODE_DEAD_LETTERED, node, attempt, iter,
        J.D_ERROR_FIRST .. err .. J.D_NEXT .. n .. J.D_DEAD .. jstr(did) .. '}')
    end
  end
end
local started = {}
if #items > 0 then
  redis.call('HINCRBY', K_STATS, STATS.RECLAIMED, #items)
  started = start_batch(worker, items, tonumber(ARGV[A.LEASE_MS]))
end
flush()
return started
