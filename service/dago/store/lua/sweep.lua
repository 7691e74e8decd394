-- Applies due timers of the shard: retries to dispatch, attempts that ran past their
-- timeout, graph deadlines, and index entries of expired graphs. Any replica may run it.
-- Also trims the work stream of what every consumer is done with, so acknowledged work
-- items do not accumulate for ever.
-- ARGV: tag, limit. Returns the number of timers handled.
local due = redis.call('ZRANGEBYSCORE', TIMERS, '-inf', NOW, 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('ZREM', TIMERS, member)
  local p = {}
  for x in string.gmatch(member, '[^|]+') do p[#p + 1] = x end
  local kind, gid = p[1], p[2]
  if kind == 'r' then
    local node, iter, attempt = p[3], p[4], tonumber(p[5])
    if fence(gid, node, attempt - 1, iter, {RETRYING}) then dispatch(gid, node, attempt, iter) end
  elseif kind == 't' then
    local node, iter, attempt = p[3], p[4], p[5]
    if fence(gid, node, attempt, iter, {RUNNING}) then
      -- The worker did not report in time (hung or gone): the attempt fails as a timeout
      -- and the worker is told to stop it; a late result is fenced out.
      local t = topo(gid, node)
      local err = jstr({c = 1, m = 'the attempt ran past its timeout and its worker did not report', r = true})
      local nk = nkey(gid)
      stop_work(gid, node, attempt)
      redis.call('HSETNX', nk, node .. ':@' .. iter .. ':' .. attempt,
        '{"st":' .. (redis.call('HGET', nk, node .. ':st') or NOW) .. ',"et":' .. NOW .. ',"s":' .. FAILED .. ',"e":' .. err .. '}')
      if tonumber(attempt) < (t.ma or 1) then
        redis.call('HSET', nk, node .. ':s', RETRYING, node .. ':err', err)
        local delay = math.min((t.ib or 1000) * ((t.mu or 2) ^ (tonumber(attempt) - 1)), t.mb or 60000)
        emit(gid, 'node_retrying', node, attempt, iter, '{"e":' .. err .. ',"b":' .. math.floor(delay) .. ',"n":' .. (attempt + 1) .. '}')
        redis.call('ZADD', TIMERS, NOW + delay, timer_key('r', gid, node, iter, attempt + 1))
      else
        redis.call('HSET', nk, node .. ':s', FAILED, node .. ':et', NOW, node .. ':err', err)
        redis.call('HINCRBY', gkey(gid), 'open', -1)
        emit(gid, 'node_failed', node, attempt, iter, '{"e":' .. err .. '}')
        fail_graph(gid, err, node)
      end
    end
  elseif kind == 'd' then
    local st = tonumber(redis.call('HGET', gkey(gid), 'state'))
    if st and st < G_COMPLETED then
      fail_graph(gid, jstr({c = 7, m = 'the graph ran past its deadline (limits.deadline)', r = false}), nil)
    end
  elseif kind == 'x' then
    local idx = nsindex(p[3])
    redis.call('ZREM', idx, gid)
    for s = G_SUBMITTED, G_CANCELLED do redis.call('ZREM', idx .. ':' .. s, gid) end
  end
end
flush()

-- Work items below both the oldest unacknowledged one and the group's last delivered id
-- were delivered and acknowledged: nothing reads them again (reclaim reads pending items
-- only, dead letters keep copies). Checked only once the stream has grown a little.
if redis.call('XLEN', WORK) > 1000 then
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', WORK)
  if ok then
    for _, g in ipairs(groups) do
      local f = {}
      for k = 1, #g, 2 do f[g[k]] = g[k + 1] end
      if f.name == GROUP then
        local p = redis.call('XPENDING', WORK, GROUP)
        local keep = f['last-delivered-id']
        if tonumber(p[1]) > 0 then keep = p[2] end
        redis.call('XTRIM', WORK, 'MINID', '~', keep)
      end
    end
  end
end
return #due
