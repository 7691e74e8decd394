-- The transitions of a node attempt: starting delivered work items (take, apply and
-- reclaim start them, so a worker never starts anything itself), applying finished
-- attempts (apply), and the retry rule shared with the timeouts sweep finds.

-- A work item of a stream reply (XREADGROUP, XCLAIM) as
-- {msg_id, gid, node, attempt, iteration, deliveries}: its one field (WORK.PACKED),
-- unpacked with fair.lua's QUEUED pattern.
local function work_item(m, deliveries)
  local g, nd, a, i = string.match(m[2][2], QUEUED)
  return {m[1], g, nd, a, i, deliveries}
end

-- New work items of the current shard for `worker`, at most `count` (never blocking).
local function read_new(worker, count)
  local items = {}
  -- Numeric loops on the hot paths: each turn of an ipairs loop is a call of its iterator
  -- (~0.5k instructions).
  local ms = Fair.take(worker, count)
  for k = 1, #ms do items[k] = work_item(ms[k], '1') end
  took = took + #items
  return items
end

-- A node's start plan (NODE.PLAN, dago.engine.topology.start_plan): the nodes whose outputs
-- it reads, its timeout (ms) and its flag (START_PLAN.INLINE or ''; plans stored before the
-- flag existed have none).
local function plan_parts(plan)
  return string.match(plan, '^([^|]*)|(%d+)|?([^|]*)$')
end
local INLINE_LEN = #START_PLAN.INLINE

-- The outputs a start reads ({node, output, ...}), in one HMGET (a join of many reads them
-- all at once); refs as the plan names them.
local NO_OUTPUTS = {}  -- never written to: the reply of a start that reads nothing
local function plan_outputs(gid, refs)
  if refs == '' then return NO_OUTPUTS end
  local names
  if refs == '*' then names = cjson.decode(redis.call('HGET', gkey(gid), META.NODE_IDS))
  elseif string.find(refs, ',', 1, true) == nil then names = {refs}  -- one ref: no gmatch
  else names = {}; for n in string.gmatch(refs, '[^,]+') do names[#names + 1] = n end end
  local outs = {}
  -- A map item's own refs, last in its plan (its value '<map>#<i>:v', and the outcome of
  -- its child run '<map>#<i>:w' for a graph body), are in its map's item hash.
  local last = names[#names]
  while last and string.find(last, MAP_ITEMS.SEP, 1, true) do
    names[#names] = nil
    local o = redis.call('HGET', hkey(gid, last), last .. NODE.OUTPUT)
    if o then outs[#outs + 1] = last; outs[#outs + 1] = o end
    last = names[#names]
  end
  for k = 1, #names, 1000 do
    local fields = {}
    for j = k, math.min(k + 999, #names) do fields[#fields + 1] = names[j] .. NODE.OUTPUT end
    local o = redis.call('HMGET', nkey(gid), unpack(fields))
    for j = 1, #fields do
      if o[j] then outs[#outs + 1] = names[k + j - 1]; outs[#outs + 1] = o[j] end
    end
  end
  return outs
end

-- The execution a queued attempt's start begins: 1, or for a requeued dead letter one more
-- than its last (deadletter.lua keeps it negated in NODE.EXECUTION: `prev`).
local function first_exec(prev)
  if prev and string.sub(prev, 1, 1) == '-' then return int(1 - tonumber(prev)) end
  return '1'
end

-- Appends a started item to start_batch's flat reply: msg_id, gid, node, attempt,
-- iteration, deliveries, execution, unstarted (1: see start_batch), then how many values
-- of {node, output, ...} follow and those, then 3 and the graph's stored fields
-- {definition, inputs, traceparent}, or 0. Flat, not a table per item: Redis turns each
-- table of a reply into a reply of its own at ~3.5k instructions (it looks for err, ok and
-- the other special fields first), two or three tables per item.
local function put_started(out, mid, gid, node, attempt, iter, deliveries, exec, unstarted, outs, stored)
  local n = #out
  out[n + 1], out[n + 2], out[n + 3], out[n + 4], out[n + 5] = mid, gid, node, attempt, iter
  out[n + 6], out[n + 7], out[n + 8], out[n + 9] = deliveries, exec, unstarted, #outs
  n = n + 9
  for k = 1, #outs do out[n + k] = outs[k] end
  n = n + #outs
  if stored then
    out[n + 1], out[n + 2], out[n + 3], out[n + 4] = 3, stored[1], stored[2], stored[3]
  else
    out[n + 1] = 0
  end
end

local function ack_all(acks)
  local acked = 0
  for k = 1, #acks, 1000 do
    acked = acked + redis.call('XACK', K_WORK, GROUP, unpack(acks, k, math.min(k + 999, #acks)))
  end
  Fair.done(acks, acked)
end

-- Marks delivered work items running (fenced: the node is queued, or running when the item
-- is delivered again) and returns, per item that may run, what it needs, in one flat list
-- (put_started): msg_id, gid, node, attempt, iteration, deliveries, execution, unstarted,
-- the outputs it reads {node, output, ...} and for the graph's first item the graph's
-- stored fields {definition, inputs, traceparent} (the run's inputs come with the graph a
-- worker loads, never per start). Each start is a new execution of the attempt: while it runs, the
-- node's fields (state, start time, worker, execution) are its record (readers show it
-- RUNNING; nothing more is written per start); a redelivered item's earlier execution gets
-- its record, ended RECLAIMED (its worker, if it still runs it, is told to stop), so no
-- record mixes two executions.
-- An inline node (START_PLAN.INLINE in its plan) that is queued is delivered without a
-- start: nothing is written (the node stays QUEUED, no node_started, no step counted), the
-- item carries its would-be execution and the flag `unstarted` (its last element, 1), and
-- the call that applies its result starts and completes it in one step (apply_batch). Its
-- work item stays pending until then, so lease, reclaim and ack-after-apply are as for
-- any item; a redelivery of it is again delivered unstarted (nothing was written).
-- What a node reads and its timeout come from its start plan (NODE.PLAN). The attempt's deadline (timeout + lease) is kept in the node's
-- NODE.DEADLINE; renew.lua puts it on the shard's timers once the attempt outlives a
-- lease renewal (a fast attempt never touches the timers). Stale items (their node moved
-- on, or the graph ended) are acked and left out; so is an item whose graph ran out of
-- steps (the graph fails).
local function start_batch(worker, items, lease)
  -- node_started's two details, made once per call (not one concatenation per node).
  local started_detail = J.D_WORKER .. jstr(worker) .. J.D_REDELIVERED
  local first_detail, again_detail = started_detail .. 'false}', started_detail .. 'true}'
  local out, acks = {}, {}
  -- Graphs whose stored fields an item of this batch carries already.
  local sent = {}
  local groups = {}
  for k = 1, #items do
    local it = items[k]
    local l = groups[it[2]]
    if l == nil then l = {}; groups[it[2]] = l end
    l[#l + 1] = it[3]
  end
  for gid, nodes in pairs(groups) do
    -- A graph this call's apply read already: its state is kept current by every write
    -- of it (gstate), its steps in gsteps.
    if gsteps[gid] == nil then
      local m = redis.call('HMGET', gkey(gid), META.STATE, META.STEPS, META.MAX_STEPS)
      gstate[gid] = tonumber(m[1]) or false
      gsteps[gid] = {tonumber(m[2]) or 0, tonumber(m[3]) or 0, 0}
    end
    local gs = gstate[gid]
    if gs and gs < GraphState.COMPLETED then read_ahead(gid, nodes, false, true) end
  end
  for k = 1, #items do
    local it = items[k]
    local mid, gid, node, attempt, iter = it[1], it[2], it[3], it[4], it[5]
    local gk = gkey(gid)
    local g = gsteps[gid]
    local gs = graph_state(gid)
    local st = nil
    local v = nil
    if gs ~= nil and gs < GraphState.COMPLETED then
      v = node_read(gid, node)
      if v[2] == attempt and v[3] == iter then
        st = v[1]
        if st ~= S_QUEUED and st ~= S_RUNNING then st = nil end
      end
    end
    -- The flag ends the plan: checked without parsing it (a 3-capture match is ~5k
    -- instructions); an inline item needs only the refs.
    local inline = st == S_QUEUED and string.sub(v[8], -INLINE_LEN) == START_PLAN.INLINE
    if st == nil then
      acks[#acks + 1] = mid
    elseif inline then
      -- Delivered unstarted (see above): only reads. The graph's stored fields come with
      -- the first item of a graph no worker has started anything of.
      local stored = false
      if gs == GraphState.SUBMITTED and not sent[gid] then
        sent[gid] = true
        stored = redis.call('HMGET', gk, META.DEFINITION, META.INPUTS, META.TRACEPARENT)
      end
      local refs = string.match(v[8], '^[^|]*')
      put_started(out, mid, gid, node, attempt, iter, it[6], first_exec(v[6]), 1, plan_outputs(gid, refs), stored)
    else
      local refs, timeout = plan_parts(v[8])
      local ok = true
      local redelivered = (st == S_RUNNING)
      local first = false
      if not redelivered then
        if g[2] > 0 and g[1] + g[3] >= g[2] then
          ok = false
          acks[#acks + 1] = mid
          fail_graph(gid, err_json(ErrorClass.LIMIT, 'the graph exceeded its limit of ' .. g[2] .. ' steps (limits.max_steps)', false), node)
        else
          g[3] = g[3] + 1
          if gs == GraphState.SUBMITTED then
            first = true
            gstate[gid] = GraphState.RUNNING
            redis.call('HSET', gk, META.STATE, GraphState.RUNNING, META.STARTED, NOW)
            index_move(gid, GraphState.SUBMITTED, GraphState.RUNNING)
            emit(gid, EventKind.GRAPH_STARTED, nil, nil, nil, nil)
          end
        end
      end
      if ok then
        local deadline = int(NOW + tonumber(timeout) + lease)
        -- The execution: 1 for a queued attempt, one more for a redelivered one, and for a
        -- requeued dead letter one more than its last (deadletter.lua keeps it negated).
        local prev = tonumber(v[6]) or 0
        local exec = 1
        if redelivered then
          exec = prev + 1
          local was = redis.call('HGET', hkey(gid, node), node .. F_WORKER)
          node_set(gid, node, record_key(node, iter, attempt, prev),
            short_record(v[4], NOW_S, NodeStateText.RECLAIMED, was))
          stop_work(gid, node, attempt, prev)
        elseif prev < 0 then
          exec = 1 - prev
        end
        exec = int(exec)
        -- What an earlier execution held of the budget ends (it will never report).
        if v[7] then Budget.release(gid, node, true) end
        local f = names_of(node)
        node_set(gid, node, f[1], S_RUNNING, f[4], NOW_S, f[12], worker, f[13], it[6], f[14], deadline, f[6], exec)
        emit(gid, EventKind.NODE_STARTED, node, attempt, iter, redelivered and again_detail or first_detail)
        -- A redelivered attempt whose timer an earlier worker set: its deadline starts over.
        if v[5] then
          local tm = timer_key(TIMER.TIMEOUT, gid, node, iter, attempt)
          if v[5] == tm then redis.call('ZADD', K_TIMERS, deadline, tm) end
        end
        local outs = plan_outputs(gid, refs)
        -- The graph's first start: the worker has not loaded the graph yet (no worker
        -- has started any of its nodes), so its stored fields come with the item instead of
        -- in a read of their own.
        local stored = false
        if first and not sent[gid] then
          sent[gid] = true
          stored = redis.call('HMGET', gk, META.DEFINITION, META.INPUTS, META.TRACEPARENT)
        end
        put_started(out, mid, gid, node, attempt, iter, it[6], exec, 0, outs, stored)
      end
    end
  end
  ack_all(acks)
  return out
end

-- The retry rule, decided here and nowhere else (a worker reports what failed; a timeout
-- found by sweep is a failure like any other): a failed attempt runs again when its error
-- is retryable, the node has attempts left, and the class of the error is in its policy's
-- retry_on (empty: any class). It waits the policy's backoff, initial * multiplier^(n - 1)
-- capped at max, varied by +-jitter, and at least what a downstream service asked for.
-- Returns that delay in ms, or nil when the node fails for good.
local function retry_delay(gid, node, attempt, class, retryable, retry_after_ms)
  if not retryable then return nil end
  -- {max_attempts, initial_ms, max_ms, multiplier, jitter, {classes}}
  local p = topo(gid, Map.topo_name(node))[NODE_TOPOLOGY.RETRY]
  local n = tonumber(attempt)
  if n >= p[1] then return nil end
  if #p[6] > 0 then
    local listed = false
    for _, c in ipairs(p[6]) do
      if c == class then listed = true; break end
    end
    if not listed then return nil end
  end
  local delay = math.min(p[2] * p[4] ^ (n - 1), p[3])
  if p[5] > 0 then delay = delay * (1 + p[5] * (2 * math.random() - 1)) end
  return math.floor(math.max(delay, retry_after_ms))
end

-- A failed attempt moves its node on: RETRYING (dispatched again after `delay` ms) or, with
-- no delay, FAILED, which fails the graph. The attempt's record (field rk, JSON rec) is
-- written in the same HSET as the node's new state. `over` names a graph limit the
-- attempt's usage broke: the graph fails instead of retrying. Returns the node's state.
local function attempt_failed(gid, node, attempt, iter, err, delay, rk, rec, over)
  if delay ~= nil then
    local nxt = tonumber(attempt) + 1
    node_set(gid, node, node .. F_STATE, NodeState.RETRYING, node .. NODE.ERROR, err, rk, rec)
    emit(gid, EventKind.NODE_RETRYING, node, attempt, iter,
      J.D_ERROR_FIRST .. err .. J.D_BACKOFF .. int(delay) .. J.D_NEXT .. int(nxt) .. '}')
    if over then
      fail_graph(gid, err_json(ErrorClass.LIMIT, over, false), node)
    elseif delay <= 0 then
      dispatch(gid, node, nxt, iter)
    else
      redis.call('ZADD', K_TIMERS, NOW + delay, timer_key(TIMER.RETRY, gid, node, iter, nxt))
    end
    return NodeState.RETRYING
  else
    node_set(gid, node, node .. F_STATE, NodeState.FAILED, node .. F_ENDED, NOW, node .. NODE.ERROR, err, rk, rec)
    open_add(gid, -1)
    emit(gid, EventKind.NODE_FAILED, node, attempt, iter, J.D_ERROR_FIRST .. err .. '}')
    -- A map item's failure is its map's to decide (map.lua).
    if Map.is_item(node) then Map.ended(gid, node, false, err) else fail_graph(gid, err, node) end
    return NodeState.FAILED
  end
end

-- Adds an attempt's usage ('in,out,cache_write,cache_read,cost[,provider,model]') to its
-- node's and graph's counters; returns the usage JSON, its provider/model detail, and the
-- limit of the graph it broke (or nil).
local function add_usage(gid, node, usage_s)
  local gk, nk = gkey(gid), hkey(gid, node)
  local u = {}
  for x in string.gmatch(usage_s, '[^,]+') do u[#u + 1] = x end
  local fields = {USAGE.INPUT, USAGE.OUTPUT, USAGE.CACHE_WRITE, USAGE.CACHE_READ}
  for k = 1, 4 do
    redis.call('HINCRBY', nk, node .. ':' .. fields[k], u[k])
    redis.call('HINCRBY', gk, fields[k], u[k])
  end
  redis.call('HINCRBYFLOAT', nk, node .. ':' .. USAGE.COST, u[5])
  if Map.is_item(node) then Map.usage(gid, node, fields, u) end
  local cost = tonumber(redis.call('HINCRBYFLOAT', gk, USAGE.COST, u[5]))
  Fair.spend(gid, u[5])
  -- Kept in step on the root's budget. A node with a child run (a subgraph node, a
  -- graph-bodied map item) reports its child's usage: a roll-up, spent already.
  -- (Short strings compare by identity: a node that used nothing costs no number parsing.)
  if u[1] ~= '0' or u[2] ~= '0' or (u[5] ~= '0' and u[5] ~= '0.0') then
    Budget.spent(gid, redis.call('HEXISTS', nk, node .. NODE.CHILD) == 1,
      tonumber(u[1]) + tonumber(u[2]), tonumber(u[5]) or 0)
  end
  local who = ''
  if u[6] then who = J.D_PROVIDER .. jstr(u[6]) .. J.D_MODEL .. jstr(u[7] or '') end
  local ujson = J.U_IN .. u[1] .. J.U_OUT .. u[2] .. J.U_CW .. u[3] .. J.U_CR .. u[4] .. J.U_COST .. u[5] .. '}'
  local lim = redis.call('HMGET', gk, META.MAX_TOKENS, META.MAX_COST, USAGE.INPUT, USAGE.OUTPUT)
  local tokens = (tonumber(lim[3]) or 0) + (tonumber(lim[4]) or 0)
  local over = nil
  if tonumber(lim[1]) > 0 and tokens > tonumber(lim[1]) then
    over = 'the graph used ' .. tokens .. ' tokens, over its limit of ' .. lim[1] .. ' (limits.max_tokens)'
  elseif tonumber(lim[2]) > 0 and cost > tonumber(lim[2]) then
    over = 'the graph cost $' .. cost .. ', over its limit of $' .. lim[2] .. ' (limits.max_cost_usd)'
  end
  return ujson, who, over
end

-- Applies the results of a batch of node attempts (ITEM.RESULT items of A from `first`),
-- fenced on (graph, node, iteration, attempt, execution): ends the execution's record, moves the node on,
-- resolves its edges, dispatches what became ready, ends the graph when nothing is left,
-- and acks the work item, all in one step. Returns per item the node's state the result
-- left it in (COMPLETED, RETRYING or FAILED: the worker reads the retry rule's decision
-- here), or UNSPECIFIED when the result was stale (fenced out).
-- A result of an item delivered unstarted (an inline node: R.DELIVERIES is its delivery
-- count, not 0) is fenced on the node still QUEUED at its attempt, iteration and would-be
-- execution, and is started here as start_batch would have: a step counted (or the graph
-- failed past its max_steps), the graph started if it was only submitted, node_started
-- appended before what the result appends, and its start time (now) written in the same
-- HSET as the node's new state.
local function apply_batch(worker, A, first)
  if first > #A then return {} end  -- no results (a worker that only takes)
  local R = ITEM.RESULT
  local wjson = jstr(worker)
  local started_detail = J.D_WORKER .. wjson .. J.D_REDELIVERED
  local first_detail, again_detail = started_detail .. 'false}', started_detail .. 'true}'
  local out = {}
  local touched = {}
  local acks = {}
  -- settle's work lists, made once per call: settle leaves `ready` empty, and `loops` is
  -- made again only when it was used (two tables and their growth less per node).
  local ready, loops
  for gid, nodes in pairs(by_graph(A, first, R)) do
    -- The graph's state, what it stored and its steps, in one read.
    local m = redis.call('HMGET', gkey(gid), META.STATE, META.BYTES, META.MAX_BYTES, META.STEPS, META.MAX_STEPS)
    local gs = tonumber(m[1]) or false
    gstate[gid] = gs
    gbytes[gid] = {tonumber(m[2]) or 0, tonumber(m[3]) or 0, 0}
    if gsteps[gid] == nil then gsteps[gid] = {tonumber(m[4]) or 0, tonumber(m[5]) or 0, 0} end
    if gs and gs < GraphState.COMPLETED then read_ahead(gid, nodes, true, false) end
  end
  -- The item's offsets, looked up once per call, not per item (each lookup in R is a
  -- table read: ~1.5k instructions an item).
  local O_MID, O_GID, O_NODE, O_ATT, O_ITER = R.MSG_ID, R.GRAPH_ID, R.NODE, R.ATTEMPT, R.ITERATION
  local O_EXEC, O_INPUT, O_OUTCOME, O_OUTPUT, O_TAKEN = R.EXECUTION, R.INPUT, R.OUTCOME, R.OUTPUT, R.TAKEN
  local O_USAGE, O_ROUTE, O_ERROR, O_DELIVERIES = R.USAGE, R.ROUTE, R.ERROR, R.DELIVERIES
  for i = first, #A, R.SIZE do
    local mid, gid, node, attempt, iter = A[i + O_MID], A[i + O_GID], A[i + O_NODE], A[i + O_ATT], A[i + O_ITER]
    local exec = A[i + O_EXEC]
    local input, outcome, output, taken_s = A[i + O_INPUT], A[i + O_OUTCOME], A[i + O_OUTPUT], A[i + O_TAKEN]
    local usage_s, route, err = A[i + O_USAGE], A[i + O_ROUTE], A[i + O_ERROR]
    local deliveries = A[i + O_DELIVERIES]
    local unstarted = deliveries ~= '0'
    -- The fence (as fence() in core.lua), the start time and the attempt's timer (set only
    -- if the attempt outlived a lease renewal, see renew.lua) in one read of the node.
    local fenced = false
    local gs = graph_state(gid)
    local v = nil
    if gs ~= nil and gs < GraphState.COMPLETED then
      v = node_read(gid, node)
      if unstarted then
        fenced = v[1] == S_QUEUED and v[2] == attempt and v[3] == iter and first_exec(v[6]) == exec
      else
        fenced = v[1] == S_RUNNING and v[2] == attempt and v[3] == iter and v[6] == exec
      end
    end
    -- The start of an unstarted item, as start_batch's (one more step; the graph's first).
    local inline_start = false
    if fenced and unstarted then
      local g = gsteps[gid]
      if g[2] > 0 and g[1] + g[3] >= g[2] then
        fenced = false
        fail_graph(gid, err_json(ErrorClass.LIMIT, 'the graph exceeded its limit of ' .. g[2] .. ' steps (limits.max_steps)', false), node)
      else
        g[3] = g[3] + 1
        if gs == GraphState.SUBMITTED then
          gstate[gid] = GraphState.RUNNING
          redis.call('HSET', gkey(gid), META.STATE, GraphState.RUNNING, META.STARTED, NOW)
          index_move(gid, GraphState.SUBMITTED, GraphState.RUNNING)
          emit(gid, EventKind.GRAPH_STARTED, nil, nil, nil, nil)
        end
        emit(gid, EventKind.NODE_STARTED, node, attempt, iter, deliveries ~= '1' and again_detail or first_detail)
        inline_start = true
      end
    end
    if fenced and v[5] and not unstarted then
      local tm = timer_key(TIMER.TIMEOUT, gid, node, iter, attempt)
      if v[5] == tm then redis.call('ZREM', K_TIMERS, tm) end
    end
    if not fenced then
      out[#out + 1] = NodeState.UNSPECIFIED
    else
      touched[gid] = true
      -- The result carries the execution's usage: its hold of the budget ends (v[7]: it
      -- has one, or it is a map item's, see read_ahead in core.lua).
      if v[7] then Budget.release(gid, node, false) end
      -- An inline start is now: its start time is the only field of its start written
      -- (below, with its new state). The worker, deliveries and deadline describe a RUNNING
      -- node, which an inline one never is (its record holds its worker); each pair is ~3k
      -- instructions. The execution is kept current where the node has one (a requeued
      -- dead letter's next execution counts from it).
      local started_s = inline_start and NOW_S or v[4]
      local started = inline_start and NOW or tonumber(v[4]) or NOW
      local ok = (outcome == Outcome.OK)
      -- Stored three times (the node's output, its attempt's record, node_completed).
      if ok and not bytes_fit(gid, #input + 3 * #output) then
        err = err_json(ErrorClass.LIMIT, 'the output of ' .. #output .. ' bytes would take the run past its limit of '
          .. gbytes[gid][2] .. ' stored bytes (DAGO_MAX_RUN_BYTES)', false)
        ok, output = false, ''
      elseif not ok then
        bytes_fit(gid, #input + #err)
      end
      local ujson, who, over = 'null', '', nil
      if usage_s ~= '' then ujson, who, over = add_usage(gid, node, usage_s) end
      -- The attempt's own state: a failed attempt is FAILED even when the node will retry.
      -- Joined in one go (an empty input, output or error adds neither its key nor
      -- anything else): each join copies all it has so far, the output included.
      local rec = J.REC_STARTED .. (started_s or NOW_S) .. J.REC_ENDED .. NOW_S
        .. J.REC_STATE .. (ok and S_COMPLETED or NodeStateText.FAILED)
        .. J.REC_WORKER .. wjson .. J.REC_USAGE .. ujson
        .. (input ~= '' and J.REC_INPUT or '') .. input
        .. (output ~= '' and J.REC_OUTPUT or '') .. output
        .. (err ~= '' and J.REC_ERROR or '') .. err .. '}'
      -- The execution's record, ended, goes into the node hash with the node's new state,
      -- in the same HSET (the fence makes this its last write).
      local rk = record_key(node, iter, attempt, exec)
      if ujson ~= 'null' then
        emit(gid, EventKind.USAGE, node, attempt, iter, J.D_USAGE_FIRST .. ujson .. who .. '}')
      end
      if ok then
        local f = names_of(node)
        if not inline_start then
          node_set(gid, node, f[1], S_COMPLETED, f[9], NOW_S, f[10], output, f[11], taken_s, rk, rec)
        elseif v[6] then
          node_set(gid, node, f[1], S_COMPLETED, f[9], NOW_S, f[10], output, f[11], taken_s, rk, rec,
            f[4], NOW_S, f[6], exec)
        else
          node_set(gid, node, f[1], S_COMPLETED, f[9], NOW_S, f[10], output, f[11], taken_s, rk, rec,
            f[4], NOW_S)
        end
        open_add(gid, -1)
        emit(gid, EventKind.NODE_COMPLETED, node, attempt, iter,
          J.D_OUTPUT .. output .. J.D_USAGE .. ujson .. J.D_MS .. (inline_start and '0' or int(NOW - started)) .. '}')
        -- Most nodes take one edge: its index is the whole list, made a set without a
        -- gmatch (its iterator and captures are ~6k instructions a node).
        local taken
        if string.find(taken_s, ',', 1, true) == nil then
          taken = taken_s ~= '' and {[taken_s] = true} or {}
        else
          taken = {}
          for x in string.gmatch(taken_s, '[^,]+') do taken[x] = true end
        end
        if route ~= '' then
          -- The router's decision (route, reason, confidence); the targets are added here.
          local rd = cjson.decode(route)
          redis.call('HSET', nkey(gid), node .. NODE.ROUTE, rd[DETAIL.ROUTE])
          local targets = {}
          for _, e in ipairs(out_list(gid, node)) do
            if taken[e[1]] then targets[#targets + 1] = e[2] end
          end
          rd[DETAIL.TARGETS] = targets
          emit(gid, EventKind.ROUTER_DECISION, node, attempt, iter, jstr(rd))
        end
        if over then
          fail_graph(gid, err_json(ErrorClass.LIMIT, over, false), node)
        elseif Map.is_item(node) then
          Map.ended(gid, node, true, nil)
        else
          if ready == nil then ready, loops = {}, {} end
          out_edges(gid, node, taken, ready, loops)
          settle(gid, ready, loops)
          if loops[1] ~= nil then loops = {} end
        end
        out[#out + 1] = NodeState.COMPLETED
      else
        if inline_start then
          if v[6] then node_set(gid, node, node .. F_STARTED, NOW_S, node .. F_EXEC, exec)
          else node_set(gid, node, node .. F_STARTED, NOW_S) end
        end
        local e = cjson.decode(err)
        local delay = retry_delay(gid, node, attempt, e[ERROR.CLASS], e[ERROR.RETRYABLE] == true,
          tonumber(A[i + R.RETRY_AFTER_MS]))
        out[#out + 1] = attempt_failed(gid, node, attempt, iter, err, delay, rk, rec, over)
      end
    end
    acks[#acks + 1] = mid
  end
  ack_all(acks)
  for gid in pairs(touched) do maybe_finish(gid) end
  return out
end
