-- Renews the leases of work items a worker still runs (resets their idle time), and puts
-- the deadline of each of those attempts (start_batch keeps it in the node's
-- NODE.DEADLINE) on the shard's timers: an attempt that outlives a renewal gets the
-- Redis-held backstop against a hung worker (sweep.lua fails it when due), while the many
-- attempts that finish before their first renewal never touch the timers. apply_batch
-- removes a timer set here. Returns the number of timers set.
local A, R = ARG.RENEW, ITEM.RENEWAL
-- Only the current execution of an attempt is renewed: a worker that was presumed dead
-- (its item taken over by another) must not take the item back by renewing it. An item
-- delivered unstarted (an inline node a worker could not run in place, so it runs in a
-- task) is renewed while its node is still QUEUED for the execution it was delivered for:
-- nothing tells two holders of it apart, and none needs to (the first apply wins, and acks
-- it for both); it has no deadline to put on the timers.
local ids = {}
local set = 0
for i = A.FIRST, #ARGV, R.SIZE do
  local gid, node, iter, attempt = ARGV[i + R.GRAPH_ID], ARGV[i + R.NODE], ARGV[i + R.ITERATION], ARGV[i + R.ATTEMPT]
  local tm = timer_key(TIMER.TIMEOUT, gid, node, iter, attempt)
  local nk = hkey(gid, node)
  local v = redis.call('HMGET', nk, node .. F_STATE, node .. F_ATTEMPT, node .. F_ITER, node .. F_EXEC,
    node .. NODE.DEADLINE, node .. F_TIMER)
  local exec = ARGV[i + R.EXECUTION]
  local running = v[1] == S_RUNNING and v[4] == exec
  if v[2] == attempt and v[3] == iter and (running or (v[1] == S_QUEUED and first_exec(v[4]) == exec)) then
    ids[#ids + 1] = ARGV[i + R.MSG_ID]
    if running and v[5] and v[6] ~= tm then
      redis.call('ZADD', K_TIMERS, v[5], tm)
      redis.call('HSET', nk, node .. F_TIMER, tm)
      set = set + 1
    end
  end
end
for k = 1, #ids, 1000 do
  redis.call('XCLAIM', K_WORK, GROUP, ARGV[A.WORKER], 0, unpack(ids, k, math.min(k + 999, #ids)), 'JUSTID')
end
return set
