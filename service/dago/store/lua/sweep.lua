-- Applies due timers of the shard: retries to dispatch, attempts that ran past their
-- timeout, graph deadlines, wait nodes' timeouts (waits.lua), and index entries of expired
-- graphs. Any replica may run it.
-- Also trims the work stream of what every consumer is done with, so acknowledged work
-- items do not accumulate for ever. Returns the number of timers handled.
local due = redis.call('ZRANGEBYSCORE', K_TIMERS, '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[ARG.SWEEP.LIMIT]))
for _, member in ipairs(due) do
  redis.call('ZREM', K_TIMERS, member)
  local p = {}
  for x in string.gmatch(member, '[^|]+') do p[#p + 1] = x end
  local kind, gid = p[1], p[2]
  if kind == TIMER.RETRY then
    local node, iter, attempt = p[3], p[4], tonumber(p[5])
    if fence(gid, node, attempt - 1, iter, {NodeState.RETRYING}) then dispatch(gid, node, attempt, iter) end
  elseif kind == TIMER.TIMEOUT then
    local node, iter, attempt = p[3], p[4], p[5]
    if fence(gid, node, attempt, iter, {NodeState.RUNNING}) then
      -- The worker did not report in time (hung or gone): the attempt fails as a timeout,
      -- under the node's retry rule like any failure, and the worker is told to stop it;
      -- a late result is fenced out.
      local err = err_json(ErrorClass.TIMEOUT, 'the attempt ran past its timeout and its worker did not report', true)
      local v = redis.call('HMGET', hkey(gid, node), node .. F_STARTED, node .. F_EXEC, node .. F_WORKER)
      local exec = v[2] or '1'
      stop_work(gid, node, attempt, exec)
      local rec = J.REC_STARTED .. (v[1] or NOW_S) .. J.REC_ENDED .. NOW_S .. J.REC_STATE .. NodeStateText.FAILED
        .. J.REC_WORKER .. jstr(v[3] or '') .. J.REC_ERROR .. err .. '}'
      local delay = retry_delay(gid, node, attempt, ErrorClass.TIMEOUT, true, 0)
      attempt_failed(gid, node, attempt, iter, err, delay, record_key(node, iter, attempt, exec), rec, nil)
    end
  elseif kind == TIMER.DEADLINE then
    local st = graph_state(gid)
    if st and st < GraphState.COMPLETED then
      fail_graph(gid, err_json(ErrorClass.LIMIT, 'the graph ran past its deadline (limits.deadline)', false), nil)
    end
  elseif kind == TIMER.THROTTLE then
    -- A throttled node's not-before time (throttle.lua): the same attempt is queued again.
    local node, iter, attempt = p[3], p[4], p[5]
    if fence(gid, node, attempt, iter, {NodeState.QUEUED}) then dispatch(gid, node, attempt, iter) end
  elseif kind == TIMER.WAIT then
    Waits.timed_out(gid, p[3], p[4])
  elseif kind == TIMER.EXPIRE then
    local idx = nsindex(p[3])
    redis.call('ZREM', idx, gid)
    for _, s in pairs(GraphState) do
      if s ~= GraphState.UNSPECIFIED then redis.call('ZREM', idx .. ':' .. s, gid) end
    end
    -- The namespace's last run here gone: no listing of every namespace reads it any more
    -- (a run created later adds it again, in this same slot).
    if redis.call('EXISTS', idx) == 0 then
      redis.call('SREM', TAG .. ':namespaces', (p[3] == nil or p[3] == '') and 'default' or p[3])
    end
  end
end
flush()
-- Registrations of watched graphs that lapsed (the API that watched them stopped renewing).
redis.call('ZREMRANGEBYSCORE', K_WATCHED, '-inf', NOW)

-- Work items below both the oldest unacknowledged one and the group's last delivered id
-- were delivered and acknowledged: nothing reads them again (reclaim reads pending items
-- only, dead letters keep copies). Checked only once the stream has grown a little.
if redis.call('XLEN', K_WORK) > 1000 then
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', K_WORK)
  if ok then
    for _, g in ipairs(groups) do
      local f = {}
      for k = 1, #g, 2 do f[g[k]] = g[k + 1] end
      if f.name == GROUP then
        local pend = redis.call('XPENDING', K_WORK, GROUP)
        local keep = f['last-delivered-id']
        if tonumber(pend[1]) > 0 then keep = pend[2] end
        redis.call('XTRIM', K_WORK, 'MINID', '~', keep)
      end
    end
  end
end
return #due
