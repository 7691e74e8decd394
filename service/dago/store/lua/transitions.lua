-- The two transitions of a node attempt, shared by start.lua, complete.lua and advance.lua
-- (each entry script is common.lua, this file, then its own body).

-- Marks a batch of delivered work items as running and returns what each needs to run.
-- Per item 9 fields: msg_id, gid, node, attempt, iter,
--       deliveries, need_inputs(0/1), refs('*' | comma-separated node ids | ''), timeout_ms.
-- Returns per item {status, inputs|false, {node, output, ...}} with status run|stale.
-- The attempt's deadline (now + timeout_ms) is kept in the node's ':dl' field; renew.lua puts
-- it on the shard's timers once the attempt outlives a lease renewal (a fast attempt never
-- touches the timers).
-- A is the argument array and `first` the index of the first item's fields.
local start_batch = function(worker, A, first)
  local started_detail = '{"w":' .. jstr(worker) .. ',"r":'
  local out = {}
  local acks = {}
  -- Per graph of the batch: {steps, max_steps, steps taken by this batch}.
  local steps = {}
  for gid, nodes in pairs(by_graph(A, first, 9)) do
    local m = redis.call('HMGET', gkey(gid), 'state', 'steps', 'max_steps')
    gstate[gid] = tonumber(m[1]) or false
    steps[gid] = {tonumber(m[2]) or 0, tonumber(m[3]) or 0, 0}
    local gs = gstate[gid]
    if gs and gs < G_COMPLETED then read_ahead(gid, nodes, false) end
  end
  for i = first, #A, 9 do
    local mid, gid, node, attempt, iter = A[i], A[i + 1], A[i + 2], A[i + 3], A[i + 4]
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
        local deadline = int(NOW + tonumber(A[i + 8]))
        node_set(gid, node, node .. ':s', S_RUNNING, node .. ':st', NOW_S, node .. ':w', worker,
          node .. ':d', A[i + 5], node .. ':dl', deadline)
        emit(gid, 'node_started', node, attempt, iter, started_detail .. (redelivered and 'true}' or 'false}'))
        -- A redelivered attempt whose timer an earlier worker set: its deadline starts over.
        local tm = timer_key('t', gid, node, iter, attempt)
        if v[5] == tm then redis.call('ZADD', TIMERS, deadline, tm) end
        local inputs = false
        if A[i + 6] == '1' then inputs = redis.call('HGET', gk, 'inputs') end
        local outs = {}
        local refs = A[i + 7]
        local names
        if refs == '*' then names = cjson.decode(redis.call('HGET', gk, 'ids'))
        elseif refs ~= '' then names = {}; for n in string.gmatch(refs, '[^,]+') do names[#names + 1] = n end
        else names = {} end
        -- The outputs it reads in one HMGET (a join of many reads them all at once).
        for k = 1, #names, 1000 do
          local fields = {}
          for j = k, math.min(k + 999, #names) do fields[#fields + 1] = names[j] .. ':o' end
          local v = redis.call('HMGET', nk, unpack(fields))
          for j = 1, #fields do
            if v[j] then outs[#outs + 1] = names[k + j - 1]; outs[#outs + 1] = v[j] end
          end
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
  return out
end

-- Applies the results of a batch of node attempts, fenced on (graph, node, iteration, attempt):
-- records the attempt, moves the node on, resolves its edges, dispatches what became ready,
-- ends the graph when nothing is left, and acks the work item, all in one step.
-- Per item 13 fields: msg_id, gid, node, attempt, iter,
--       input(json|''), outcome(ok|retry|fail), output(json|''), taken(comma-separated edge indexes),
--       usage('in,out,cache_write,cache_read,cost[,provider,model]'|''), route decision(json|''), error(json|''),
--       delay_ms.
-- Returns per item 'applied' or 'stale'.
-- A is the argument array and `first` the index of the first item's fields.
local complete_batch = function(worker, A, first)
  local wjson = jstr(worker)
  local out = {}
  local touched = {}
  local acks = {}
  for gid, nodes in pairs(by_graph(A, first, 13)) do
    local gs = graph_state(gid)
    if gs ~= nil and gs < G_COMPLETED then read_ahead(gid, nodes, true) end
  end
  for i = first, #A, 13 do
    local mid, gid, node, attempt, iter = A[i], A[i + 1], A[i + 2], A[i + 3], A[i + 4]
    local input, outcome, output, taken_s = A[i + 5], A[i + 6], A[i + 7], A[i + 8]
    local usage_s, route, err, delay = A[i + 9], A[i + 10], A[i + 11], tonumber(A[i + 12])
    -- The fence (as fence() in common.lua), the start time and the attempt's timer (set only
    -- if the attempt outlived a lease renewal, see renew.lua) in one read of the node.
    local gk, nk = gkey(gid), nkey(gid)
    local fenced = false
    local gs = graph_state(gid)
    local v = nil
    if gs ~= nil and gs < G_COMPLETED then
      v = node_read(gid, node)
      fenced = v[1] == S_RUNNING and v[2] == attempt and v[3] == iter
    end
    if v and v[5] then
      local tm = timer_key('t', gid, node, iter, attempt)
      if v[5] == tm then redis.call('ZREM', TIMERS, tm) end
    end
    if not fenced then
      out[#out + 1] = 'stale'
    else
      touched[gid] = true
      local started = tonumber(v[4]) or NOW
      -- The attempt's own state: a failed attempt is FAILED even when the node will retry.
      local state = (outcome == 'ok') and COMPLETED or FAILED
      local ujson = 'null'
      local who = ''
      local over = nil
      if usage_s ~= '' then
        local u = {}
        for x in string.gmatch(usage_s, '[^,]+') do u[#u + 1] = x end
        local fields = {'ui', 'uo', 'ucc', 'ucr'}
        for k = 1, 4 do
          redis.call('HINCRBY', nk, node .. ':' .. fields[k], u[k])
          redis.call('HINCRBY', gk, fields[k], u[k])
        end
        redis.call('HINCRBYFLOAT', nk, node .. ':uc', u[5])
        local cost = tonumber(redis.call('HINCRBYFLOAT', gk, 'uc', u[5]))
        if u[6] then who = ',"provider":' .. jstr(u[6]) .. ',"model":' .. jstr(u[7] or '') end
        ujson = '{"i":' .. u[1] .. ',"o":' .. u[2] .. ',"cc":' .. u[3] .. ',"cr":' .. u[4] .. ',"c":' .. u[5] .. '}'
        local lim = redis.call('HMGET', gk, 'max_tokens', 'max_cost', 'ui', 'uo')
        local tokens = (tonumber(lim[3]) or 0) + (tonumber(lim[4]) or 0)
        if tonumber(lim[1]) > 0 and tokens > tonumber(lim[1]) then
          over = 'the graph used ' .. tokens .. ' tokens, over its limit of ' .. lim[1] .. ' (limits.max_tokens)'
        elseif tonumber(lim[2]) > 0 and cost > tonumber(lim[2]) then
          over = 'the graph cost $' .. cost .. ', over its limit of $' .. lim[2] .. ' (limits.max_cost_usd)'
        end
      end
      local rec = '{"st":' .. (v[4] or NOW_S) .. ',"et":' .. NOW_S .. ',"s":' .. (state == COMPLETED and S_COMPLETED or int(state))
        .. ',"w":' .. wjson
        .. ',"u":' .. ujson
      if input ~= '' then rec = rec .. ',"in":' .. input end
      if output ~= '' then rec = rec .. ',"o":' .. output end
      if err ~= '' then rec = rec .. ',"e":' .. err end
      -- The attempt's immutable record goes into the node hash ('<node>:@<iter>:<attempt>')
      -- with the node's new state, in the same HSET (the fence makes this the only write).
      local rk, rec = node .. ':@' .. iter .. ':' .. attempt, rec .. '}'
      if ujson ~= 'null' then
        emit(gid, 'usage', node, attempt, iter, '{"u":' .. ujson .. who .. '}')
      end
      if outcome == 'ok' then
        node_set(gid, node, node .. ':s', S_COMPLETED, node .. ':et', NOW_S, node .. ':o', output, rk, rec)
        open_add(gid, -1)
        emit(gid, 'node_completed', node, attempt, iter,
          '{"o":' .. output .. ',"u":' .. ujson .. ',"ms":' .. int(NOW - started) .. '}')
        local taken = {}
        for x in string.gmatch(taken_s, '[^,]+') do taken[x] = true end
        if route ~= '' then
          -- route is the router's decision as JSON (route, reason, confidence); targets are added here.
          local rd = cjson.decode(route)
          redis.call('HSET', nk, node .. ':route', rd.route)
          local targets = {}
          for _, e in ipairs(out_list(gid, node)) do
            if taken[e[1]] then targets[#targets + 1] = e[2] end
          end
          rd.targets = targets
          emit(gid, 'router_decision', node, attempt, iter, jstr(rd))
        end
        if over then
          fail_graph(gid, jstr({c = 7, m = over, r = false}), node)
        else
          local ready, loops = {}, {}
          out_edges(gid, node, taken, ready, loops)
          settle(gid, ready, loops)
        end
      elseif outcome == 'retry' then
        node_set(gid, node, node .. ':s', RETRYING, node .. ':err', err, rk, rec)
        emit(gid, 'node_retrying', node, attempt, iter,
          '{"e":' .. err .. ',"b":' .. delay .. ',"n":' .. (tonumber(attempt) + 1) .. '}')
        if over then
          fail_graph(gid, jstr({c = 7, m = over, r = false}), node)
        elseif delay <= 0 then
          dispatch(gid, node, tonumber(attempt) + 1, iter)
        else
          redis.call('ZADD', TIMERS, NOW + delay, timer_key('r', gid, node, iter, tonumber(attempt) + 1))
        end
      else
        node_set(gid, node, node .. ':s', FAILED, node .. ':et', NOW, node .. ':err', err, rk, rec)
        open_add(gid, -1)
        emit(gid, 'node_failed', node, attempt, iter, '{"e":' .. err .. '}')
        fail_graph(gid, err, node)
      end
      out[#out + 1] = 'applied'
    end
    acks[#acks + 1] = mid
  end
  for k = 1, #acks, 1000 do
    redis.call('XACK', WORK, GROUP, unpack(acks, k, math.min(k + 999, #acks)))
  end
  for gid in pairs(touched) do maybe_finish(gid) end
  return out
end
