-- Marks a batch of delivered work items as running and returns what each needs to run.
-- ARGV: tag, worker_id, then per item 9 fields: msg_id, gid, node, attempt, iter,
--       deliveries, need_inputs(0/1), refs('*' | comma-separated node ids | ''), timeout_ms.
-- Returns per item {status, inputs|false, {node, output, ...}} with status run|stale.
local worker = ARGV[2]
local started_detail = '{"w":' .. jstr(worker) .. ',"r":'
local out = {}
for i = 3, #ARGV, 9 do
  local mid, gid, node, attempt, iter = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local deliveries = tonumber(ARGV[i + 5])
  -- The fence (as fence() in common.lua) and the step limit in one read of the graph.
  local gk = gkey(gid)
  local m = redis.call('HMGET', gk, 'state', 'steps', 'max_steps')
  local gs = tonumber(m[1])
  local st = nil
  if gs ~= nil and gs < G_COMPLETED then
    local v = redis.call('HMGET', nkey(gid), node .. ':s', node .. ':a', node .. ':i')
    if tonumber(v[2]) == tonumber(attempt) and tonumber(v[3]) == tonumber(iter) then
      st = tonumber(v[1])
      if st ~= QUEUED and st ~= RUNNING then st = nil end
    end
  end
  if st == nil then
    redis.call('XACK', WORK, GROUP, mid)
    out[#out + 1] = {'stale', false, {}}
  else
    local nk = nkey(gid)
    local ok = true
    local redelivered = (st == RUNNING)
    if not redelivered then
      local max_steps = tonumber(m[3])
      if max_steps > 0 and tonumber(m[2]) >= max_steps then
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
      emit(gid, 'node_started', node, attempt, iter, started_detail .. (redelivered and 'true}' or 'false}'))
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
