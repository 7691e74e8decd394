-- Marks a batch of delivered work items as running and returns what each needs to run.
-- ARGV: tag, worker_id, then per item 9 fields: msg_id, gid, node, attempt, iter,
--       deliveries, need_inputs(0/1), refs('*' | comma-separated node ids | ''), timeout_ms.
-- Returns per item {status, inputs|false, {node, output, ...}} with status run|stale.
local worker = ARGV[2]
local out = {}
for i = 3, #ARGV, 9 do
  local mid, gid, node, attempt, iter = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local deliveries = tonumber(ARGV[i + 5])
  local st, gs = fence(gid, node, attempt, iter, {QUEUED, RUNNING})
  if st == nil then
    redis.call('XACK', WORK, GROUP, mid)
    out[#out + 1] = {'stale', false, {}}
  else
    local gk = gkey(gid)
    local nk = nkey(gid)
    local ok = true
    local redelivered = (st == RUNNING)
    if not redelivered then
      local lim = redis.call('HMGET', gk, 'steps', 'max_steps')
      local max_steps = tonumber(lim[2])
      if max_steps > 0 and tonumber(lim[1]) >= max_steps then
        ok = false
        redis.call('XACK', WORK, GROUP, mid)
        fail_graph(gid, jstr({c = 7, m = 'the graph exceeded its limit of ' .. max_steps .. ' steps (limits.max_steps)', r = false}), node)
        out[#out + 1] = {'stale', false, {}}
      else
        redis.call('HINCRBY', gk, 'steps', 1)
        if gs == G_SUBMITTED then
          redis.call('HSET', gk, 'state', G_RUNNING, 'started', NOW)
          index_move(gid, G_SUBMITTED, G_RUNNING)
          emit(gid, 'graph_started', nil, nil, nil, nil)
        end
      end
    end
    if ok then
      redis.call('HSET', nk, node .. ':s', RUNNING, node .. ':st', NOW, node .. ':w', worker, node .. ':d', deliveries)
      emit(gid, 'node_started', node, attempt, iter, jstr({w = worker, r = redelivered}))
      redis.call('ZADD', TIMERS, NOW + tonumber(ARGV[i + 8]), timer_key('t', gid, node, iter, attempt))
      local inputs = false
      if ARGV[i + 6] == '1' then inputs = redis.call('HGET', gk, 'inputs') end
      local outs = {}
      local refs = ARGV[i + 7]
      local names
      if refs == '*' then names = cjson.decode(redis.call('HGET', gk, 'ids'))
      elseif refs ~= '' then names = {}; for n in string.gmatch(refs, '[^,]+') do names[#names + 1] = n end
      else names = {} end
      for _, n in ipairs(names) do
        local o = redis.call('HGET', nk, n .. ':o')
        if o then outs[#outs + 1] = n; outs[#outs + 1] = o end
      end
      out[#out + 1] = {'run', inputs, outs}
    end
  end
end
flush()
return out
