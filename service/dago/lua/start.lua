-- Marks a batch of delivered work items as running and returns what each needs to run.
-- ARGV: tag, worker_id, then per item 9 fields: msg_id, gid, node, attempt, iter,
--       deliveries, need_inputs(0/1), refs('*' | comma-separated node ids | ''), timeout_ms.
-- Returns per item {status, inputs|false, {node, output, ...}} with status run|stale.
-- The attempt's deadline (now + timeout_ms) is kept in the node's ':dl' field; renew.lua puts
-- it on the shard's timers once the attempt outlives a lease renewal (a fast attempt never
-- touches the timers).
local worker = ARGV[2]
local started_detail = '{"w":' .. jstr(worker) .. ',"r":'
local out = {}
local acks = {}
-- Per graph of the batch: {steps, max_steps, steps taken by this batch}.
local steps = {}
for gid, nodes in pairs(by_graph(3, 9)) do
  local m = redis.call('HMGET', gkey(gid), 'state', 'steps', 'max_steps')
  gstate[gid] = tonumber(m[1]) or false
  steps[gid] = {tonumber(m[2]) or 0, tonumber(m[3]) or 0, 0}
  local gs = gstate[gid]
  if gs and gs < G_COMPLETED then read_ahead(gid, nodes, false) end
end
for i = 3, #ARGV, 9 do
  local mid, gid, node, attempt, iter = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local gk = gkey(gid)
  local g = steps[gid]
  local gs = graph_state(gid)
  local st = nil
  local v = nil
  if gs ~= nil and gs < G_COMPLETED then
    v = node_read(gid, node)
    if v[2] == attempt and v[3] == iter then
      st = v[1]
      if st ~= S_QUEUED and st ~= S_RUNNING then st = nil end
    end
  end
  if st == nil then
    acks[#acks + 1] = mid
    out[#out + 1] = {'stale', false, {}}
  else
    local nk = nkey(gid)
    local ok = true
    local redelivered = (st == S_RUNNING)
    if not redelivered then
      if g[2] > 0 and g[1] + g[3] >= g[2] then
        ok = false
        acks[#acks + 1] = mid
        fail_graph(gid, jstr({c = 7, m = 'the graph exceeded its limit of ' .. g[2] .. ' steps (limits.max_steps)', r = false}), node)
        out[#out + 1] = {'stale', false, {}}
      else
        g[3] = g[3] + 1
        if gs == G_SUBMITTED then
          gstate[gid] = G_RUNNING
          redis.call('HSET', gk, 'state', G_RUNNING, 'started', NOW)
          index_move(gid, G_SUBMITTED, G_RUNNING)
          emit(gid, 'graph_started', nil, nil, nil, nil)
        end
      end
    end
    if ok then
      local deadline = int(NOW + tonumber(ARGV[i + 8]))
      node_set(gid, node, node .. ':s', S_RUNNING, node .. ':st', NOW_S, node .. ':w', worker,
        node .. ':d', ARGV[i + 5], node .. ':dl', deadline)
      emit(gid, 'node_started', node, attempt, iter, started_detail .. (redelivered and 'true}' or 'false}'))
      -- A redelivered attempt whose timer an earlier worker set: its deadline starts over.
      local tm = timer_key('t', gid, node, iter, attempt)
      if v[5] == tm then redis.call('ZADD', TIMERS, deadline, tm) end
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
for gid, g in pairs(steps) do
  if g[3] > 0 then redis.call('HINCRBY', gkey(gid), 'steps', g[3]) end
end
for k = 1, #acks, 1000 do
  redis.call('XACK', WORK, GROUP, unpack(acks, k, math.min(k + 999, #acks)))
end
flush()
return out
