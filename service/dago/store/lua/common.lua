-- Shared by every dago function: the library (see dago.store) is this file, transitions.lua,
-- then each entry script as the body of a registered function, which first calls begin().
-- Loaded once, so the helpers below are made once, not on every call.
-- ARGV[1] is the shard's hash-tagged base "<prefix>:{s<n>}"; the call's one key is the
-- shard's work stream, declared so the call is routed to the right node on Redis Cluster.
-- Every other key shares the hash tag, so it lives in the same slot. Key layouts mirror
-- dago/keys.py.

-- Set by begin() for each call.
local ARGV, TAG, WORK, DEAD, TIMERS, NOTIFY, CONTROL, INDEX, STATS
local GROUP = 'workers'

-- dago.v1.NodeState and dago.v1.GraphState numbers.
local PENDING, QUEUED, RUNNING, RETRYING, COMPLETED, FAILED, SKIPPED, CANCELLED = 1, 2, 3, 4, 6, 7, 8, 9
local DEAD_LETTERED = 10
local G_SUBMITTED, G_RUNNING, G_COMPLETED, G_FAILED, G_CANCELLED = 1, 2, 3, 4, 5

local NOW, NOW_S

-- Lua turns a number it hands to Redis or joins to a string into text with "%.14g", a
-- floating-point conversion that was ~10% of Redis's instructions per node: integers on the
-- hot path are formatted once, with "%d". The other way, tonumber() runs strtod (~1,400
-- instructions): the hot paths compare the stored text instead (node states, attempts and
-- iterations are always written as plain integers).
local function int(n) return string.format('%d', n) end
-- The same states as stored text (a library's load-time code may not call string.format).
local S_PENDING, S_QUEUED, S_RUNNING, S_COMPLETED = '1', '2', '3', '6'

local notified
local controls
local topo_cache
-- Per script run: each graph's state is read once (writes go through set_state/end_graph),
-- and changes to its count of open nodes are summed and applied in one HINCRBY.
local gstate
local open_delta
-- Join counters (see settle): {state, received, taken, iteration, dirty, gid, node} per
-- graph and node, written back once per script by flush().
local jc

-- Key names are built once per graph and script run (each concatenation makes a new string).
local gkeys, nkeys
local function gkey(gid)
  local k = gkeys[gid]
  if k == nil then k = TAG .. ':g:' .. gid; gkeys[gid] = k end
  return k
end
local function nkey(gid)
  local k = nkeys[gid]
  if k == nil then k = TAG .. ':g:' .. gid .. ':n'; nkeys[gid] = k end
  return k
end

local topo_raw

local function topo(gid, name)
  local ck = gid .. '\0' .. name
  local t = topo_cache[ck]
  if t == nil then
    local raw = topo_raw[ck]
    if raw == nil then raw = redis.call('HGET', gkey(gid) .. ':t', name) end
    t = cjson.decode(raw)
    topo_cache[ck] = t
  end
  return t
end

-- A node's outgoing edges as {index, to, back, owner, single}, all text (the topology's
-- '>node' field; graphs stored before it existed fall back to the JSON's numbers).
local out_cache

local function out_list(gid, node)
  local ck = gid .. '\0' .. node
  local l = out_cache[ck]
  if l ~= nil then return l end
  l = {}
  local raw = topo_raw[gid .. '\0>' .. node]
  if raw == nil then raw = redis.call('HGET', gkey(gid) .. ':t', '>' .. node) end
  if raw then
    for idx, to, back, owner, single in string.gmatch(raw, '([^,;]+),([^,;]+),([^,;]+),([^,;]+),([^,;]+)') do
      l[#l + 1] = {idx, to, back, owner, single}
    end
  else
    for _, e in ipairs(topo(gid, node).o) do
      l[#l + 1] = {int(e[1]), e[2], int(e[3]), int(e[4]), int(e[5] or 0)}
    end
  end
  out_cache[ck] = l
  return l
end

-- Node fields a batch reads (state, attempt, iteration, start time, timer) are read ahead
-- with one HMGET per graph (read_ahead) instead of one per item. Every write of a node's
-- fields goes through node_set, which forgets what was read ahead for that node, so a later
-- read (node_read) goes to Redis and sees the write. Topology entries come in the same way.
local ahead
local AHEAD = {':s', ':a', ':i', ':st', ':tm'}

local function read_ahead(gid, nodes, with_topo)
  local args = {}
  for _, n in ipairs(nodes) do
    for _, f in ipairs(AHEAD) do args[#args + 1] = n .. f end
  end
  local t = ahead[gid] or {}
  ahead[gid] = t
  local per = #AHEAD
  for k = 1, #args, 1000 do
    local v = redis.call('HMGET', nkey(gid), unpack(args, k, math.min(k + 999, #args)))
    for j = 0, #v / per - 1 do
      t[nodes[(k - 1) / per + j + 1]] = {v[j * per + 1], v[j * per + 2], v[j * per + 3], v[j * per + 4], v[j * per + 5]}
    end
  end
  if with_topo then
    for k = 1, #nodes, 1000 do
      local part = {}
      for j = k, math.min(k + 999, #nodes) do part[#part + 1] = '>' .. nodes[j] end
      local v = redis.call('HMGET', gkey(gid) .. ':t', unpack(part))
      for j, n in ipairs(part) do
        if v[j] then topo_raw[gid .. '\0' .. n] = v[j] end
      end
    end
  end
end

-- {state, attempt, iteration, start time, timer member} of a node (strings or false).
local function node_read(gid, node)
  local t = ahead[gid]
  local r = t and t[node]
  if r then return r end
  return redis.call('HMGET', nkey(gid), node .. ':s', node .. ':a', node .. ':i', node .. ':st', node .. ':tm')
end

local function node_set(gid, node, ...)
  local t = ahead[gid]
  if t then t[node] = nil end
  redis.call('HSET', nkey(gid), ...)
end

-- Groups a batch's items by graph: {gid = {node, ...}} for read_ahead.
local function by_graph(A, first, stride)
  local g = {}
  for i = first, #A, stride do
    local gid, node = A[i + 1], A[i + 2]
    local l = g[gid]
    if l == nil then l = {}; g[gid] = l end
    l[#l + 1] = node
  end
  return g
end

local function jstr(s) return cjson.encode(s) end

-- The graph's state (a GraphState number), or nil when the graph is unknown or expired.
local function graph_state(gid)
  local s = gstate[gid]
  if s == nil then
    s = tonumber(redis.call('HGET', gkey(gid), 'state')) or false
    gstate[gid] = s
  end
  return s or nil
end

local function open_add(gid, d)
  open_delta[gid] = (open_delta[gid] or 0) + d
end

-- Applies the graph's pending change of its open count; returns the count.
local function open_apply(gid)
  local d = open_delta[gid] or 0
  open_delta[gid] = nil
  return tonumber(redis.call('HINCRBY', gkey(gid), 'open', d))
end

-- Events of this script run, per graph in order; flush() writes them.
local pending

-- Appends one event to the graph's log (seq is the stream id's sequence part). The event is
-- written by flush(), which every script calls before returning after a change, with the
-- seqs of all of a graph's events taken by one HINCRBY (one command per graph, not per event).
local function emit(gid, etype, node, attempt, iter, detail)
  local ev = {'t', etype, 'ts', NOW_S}
  if node then
    ev[5] = 'n'; ev[6] = node; ev[7] = 'a'; ev[8] = attempt; ev[9] = 'i'; ev[10] = iter
  end
  if detail then
    ev[#ev + 1] = 'd'; ev[#ev + 1] = detail
  end
  local list = pending[gid]
  if list == nil then
    list = {}
    pending[gid] = list
  end
  list[#list + 1] = ev
  notified[gid] = true
end

local function jc_write(c)
  if c[5] then
    redis.call('HSET', nkey(c[6]), c[7] .. ':r', c[2], c[7] .. ':t', c[3])
    c[5] = false
  end
end

local function flush()
  for _, c in pairs(jc) do jc_write(c) end
  jc = {}
  for gid, d in pairs(open_delta) do
    if d ~= 0 then redis.call('HINCRBY', gkey(gid), 'open', d) end
  end
  open_delta = {}
  for gid, list in pairs(pending) do
    local ek = gkey(gid) .. ':e'
    -- Entry ids are 0-<seq>: '0-*' lets Redis number them on from the last one, the same
    -- count the graph's 'seq' field keeps (both are only ever written here).
    redis.call('HINCRBY', gkey(gid), 'seq', #list)
    for _, ev in ipairs(list) do
      redis.call('XADD', ek, '0-*', unpack(ev))
    end
  end
  pending = {}
  for gid in pairs(notified) do
    redis.call('XADD', NOTIFY, 'MAXLEN', '~', 10000, '*', 'g', gid)
  end
  for k, v in pairs(controls) do
    redis.call('XADD', CONTROL, 'MAXLEN', '~', 1000, '*', 'g', v[1], 'n', v[2], 'a', v[3])
  end
end

local function stop_work(gid, node, attempt)
  controls[gid .. '\0' .. (node or '')] = {gid, node or '', attempt or ''}
end

-- Each namespace lists its own graphs: the default one uses the shard's plain index, any
-- other its own family (mirrors ShardKeys.index / ShardKeys.request in dago/keys.py).
local function nsindex(ns)
  if not ns or ns == '' or ns == 'default' then return INDEX end
  return TAG .. ':ns:' .. ns .. ':index'
end

local function reqkey(ns, rid)
  if not ns or ns == '' or ns == 'default' then return TAG .. ':req:' .. rid end
  return TAG .. ':ns:' .. ns .. ':req:' .. rid
end

local function index_move(gid, from_state, to_state)
  local v = redis.call('HMGET', gkey(gid), 'created', 'ns')
  local idx = nsindex(v[2])
  redis.call('ZREM', idx .. ':' .. from_state, gid)
  redis.call('ZADD', idx .. ':' .. to_state, v[1], gid)
end

local function dispatch(gid, node, attempt, iter)
  if type(attempt) == 'number' then attempt = int(attempt) end
  if type(iter) == 'number' then iter = int(iter) end
  node_set(gid, node, node .. ':s', S_QUEUED, node .. ':a', attempt, node .. ':i', iter)
  redis.call('XADD', WORK, '*', 'g', gid, 'n', node, 'a', attempt, 'i', iter)
end

local function timer_key(kind, gid, node, iter, attempt)
  return kind .. '|' .. gid .. '|' .. node .. '|' .. iter .. '|' .. attempt
end

-- Counters read by the metrics (dago.metrics.RedisCollector): graphs finished by status and
-- a histogram of their durations (bucket bounds as GRAPH_DURATION_BUCKETS there).
local DURATION_BOUNDS = {0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600}
local END_NAMES = {[G_COMPLETED] = 'completed', [G_FAILED] = 'failed', [G_CANCELLED] = 'cancelled'}

local function record_end(gk, state)
  local secs = (NOW - (tonumber(redis.call('HGET', gk, 'created')) or NOW)) / 1000
  local b = #DURATION_BOUNDS
  for k, le in ipairs(DURATION_BOUNDS) do
    if secs <= le then b = k - 1; break end
  end
  redis.call('HINCRBY', STATS, 'fin:' .. END_NAMES[state], 1)
  redis.call('HINCRBY', STATS, 'dur:' .. b, 1)
  redis.call('HINCRBYFLOAT', STATS, 'dur_sum', secs)
end

-- Ends a graph: every node still open is cancelled (running) or skipped (pending),
-- workers are told to stop, and the keys expire after the retention period.
local function end_graph(gid, state, etype, detail, err)
  local gk = gkey(gid)
  local old = graph_state(gid)
  if old >= G_COMPLETED then return end
  gstate[gid] = state
  open_delta[gid] = nil
  redis.call('HSET', gk, 'state', state, 'ended', NOW)
  record_end(gk, state)
  if err then redis.call('HSET', gk, 'err', err) end
  index_move(gid, old, state)
  local nk = nkey(gid)
  -- A graph completes when no node is open any more: nothing to cancel or skip.
  local ids = {}
  if state ~= G_COMPLETED then ids = cjson.decode(redis.call('HGET', gk, 'ids')) end
  local why = (state == G_CANCELLED) and 'graph cancelled' or 'graph failed'
  local stopped = false
  for _, node in ipairs(ids) do
    local v = redis.call('HMGET', nk, node .. ':s', node .. ':a', node .. ':i')
    local st = tonumber(v[1])
    if st == PENDING then
      node_set(gid, node, node .. ':s', SKIPPED, node .. ':et', NOW)
      emit(gid, 'node_skipped', node, v[2], v[3], jstr({reason = why}))
    elseif st and (st < COMPLETED or st == DEAD_LETTERED) then
      node_set(gid, node, node .. ':s', CANCELLED, node .. ':et', NOW)
      emit(gid, 'node_cancelled', node, v[2], v[3], jstr({reason = why}))
      if st == RUNNING then stopped = true end
    end
  end
  redis.call('HSET', gk, 'open', 0)
  emit(gid, etype, nil, nil, nil, detail)
  if stopped then stop_work(gid, nil, nil) end
  local ttl = tonumber(redis.call('HGET', gk, 'retention'))
  for _, suffix in ipairs({'', ':n', ':t', ':a', ':e'}) do
    redis.call('EXPIRE', gk .. suffix, ttl)
  end
  local r = redis.call('HMGET', gk, 'request_id', 'ns')
  if r[1] and r[1] ~= '' then redis.call('EXPIRE', reqkey(r[2], r[1]), ttl) end
  local xs = 'x|' .. gid
  if r[2] and r[2] ~= '' and r[2] ~= 'default' then xs = xs .. '|' .. r[2] end
  redis.call('ZADD', TIMERS, NOW + ttl * 1000, xs)
  redis.call('ZREM', TIMERS, 'd|' .. gid)
end

local function usage_json(gk)
  local u = redis.call('HMGET', gk, 'ui', 'uo', 'ucc', 'ucr', 'uc')
  return '{"i":' .. (u[1] or 0) .. ',"o":' .. (u[2] or 0) .. ',"cc":' .. (u[3] or 0)
    .. ',"cr":' .. (u[4] or 0) .. ',"c":' .. (u[5] or 0) .. '}'
end

local function fail_graph(gid, err, node)
  end_graph(gid, G_FAILED, 'graph_failed', '{"e":' .. err .. ',"n":' .. jstr(node or '') .. '}', err)
end

local function maybe_finish(gid)
  local st = graph_state(gid)
  if st and st < G_COMPLETED and open_apply(gid) <= 0 then
    end_graph(gid, G_COMPLETED, 'graph_completed', '{"u":' .. usage_json(gkey(gid)) .. '}', nil)
  end
end

-- Edge resolution and join bookkeeping. `ready` collects nodes whose join may now fire:
-- a node id (its join counters changed; each id is queued once until settle looks at it),
-- or {id, taken, flag} for the only edge into a node that is no loop's exit (topology
-- flag 1: the node is in no loop, 2: in a loop's body), which fires or skips the node at
-- once: such an edge resolves once per iteration (its source's transition is fenced), so
-- it needs neither a resolved-mark nor counters, and with flag 1 not even a read.
-- Join counter increments are summed per node and applied when settle looks at it. Only a
-- loop's exit edge can be resolved twice (taken inside the loop, then untaken by the loop's
-- end, finish_loop): `exit` marks it resolved ('e:<index>') so the second time counts nothing.
local join_r, join_t, queued

local function resolve(gid, idx, to, taken, ready, single, exit)
  if single == '1' or single == '2' then
    ready[#ready + 1] = {to, taken, single}
    return
  end
  if exit and redis.call('HSETNX', nkey(gid), 'e:' .. idx, taken and 1 or 0) == 0 then return end
  local k = gid .. '\0' .. to
  join_r[k] = (join_r[k] or 0) + 1
  if taken then join_t[k] = (join_t[k] or 0) + 1 end
  if not queued[k] then
    queued[k] = true
    ready[#ready + 1] = to
  end
end

-- A loop that will not run again resolves the exits it deferred: untaken so far, untaken now.
local function finish_loop(gid, b, ready)
  local L = topo(gid, 'b:' .. b)
  for _, x in ipairs(L.x) do resolve(gid, x[1], x[2], false, ready, nil, true) end
end

local function out_edges(gid, node, taken, ready, loops)
  for _, e in ipairs(out_list(gid, node)) do
    local idx, to, back, owner = e[1], e[2], e[3], e[4]
    if back == '1' then
      loops[#loops + 1] = {idx, taken[idx] == true}
    elseif taken[idx] then
      resolve(gid, idx, to, true, ready, e[5], owner ~= '0')
    elseif owner == '0' then
      -- An exit edge untaken inside a loop waits for the loop's end (finish_loop).
      resolve(gid, idx, to, false, ready, e[5])
    end
  end
end

local function skip(gid, node, reason, ready, loops)
  local nk = nkey(gid)
  local v = redis.call('HMGET', nk, node .. ':a', node .. ':i')
  node_set(gid, node, node .. ':s', SKIPPED, node .. ':et', NOW)
  open_add(gid, -1)
  emit(gid, 'node_skipped', node, v[1], v[2], jstr({reason = reason}))
  out_edges(gid, node, {}, ready, loops)
end

local function continue_loop(gid, b, from, ready)
  local L = topo(gid, 'b:' .. b)
  local head = L.h
  local nk = nkey(gid)
  local hi = tonumber(redis.call('HGET', nk, head .. ':i'))
  if hi >= topo(gid, head).mx then
    emit(gid, 'loop_iteration', head, 0, hi, jstr({iteration = hi, from = from, exhausted = true}))
    finish_loop(gid, b, ready)
    return
  end
  for _, idx in ipairs(L.ie) do redis.call('HDEL', nk, 'e:' .. idx) end
  local reopened = 0
  for _, v in ipairs(L.body) do
    local st = tonumber(redis.call('HGET', nk, v .. ':s'))
    if st >= COMPLETED then reopened = reopened + 1 end
    local iter = tonumber(redis.call('HGET', nk, v .. ':i')) + 1
    node_set(gid, v, v .. ':s', PENDING, v .. ':i', iter, v .. ':a', 0)
    local c = jc[gid .. '\0' .. v]
    if c then
      jc_write(c)
      jc[gid .. '\0' .. v] = nil
    end
    if v ~= head then redis.call('HSET', nk, v .. ':r', 0, v .. ':t', 0) end
  end
  open_add(gid, reopened)
  emit(gid, 'loop_iteration', head, 0, hi + 1, jstr({iteration = hi + 1, from = from}))
  dispatch(gid, head, 1, hi + 1)
end

-- Fires joins until nothing changes: skips propagate, loops end or go round.
local function settle(gid, ready, loops)
  while #ready > 0 or #loops > 0 do
    while #ready > 0 do
      local node = table.remove(ready)
      local nk = nkey(gid)
      if type(node) == 'table' then
        local to = node[1]
        if node[3] == '1' then
          -- Outside every loop, the edge's target waits at iteration 1 for this edge alone.
          if node[2] then
            dispatch(gid, to, '1', '1')
          else
            skip(gid, to, 'no incoming edge was taken', ready, loops)
          end
        else
          local v = redis.call('HMGET', nk, to .. ':s', to .. ':i')
          if v[1] == S_PENDING then
            if node[2] then
              dispatch(gid, to, '1', v[2])
            else
              skip(gid, to, 'no incoming edge was taken', ready, loops)
            end
          end
        end
      else
        -- A join's counters are read once per script and written back by flush(), so
        -- a fan-in of many edges costs one read and one write, not three commands per edge.
        local k = gid .. '\0' .. node
        queued[k] = nil
        local c = jc[k]
        if c == nil then
          local v = redis.call('HMGET', nk, node .. ':s', node .. ':r', node .. ':t', node .. ':i')
          c = {tonumber(v[1]), tonumber(v[2]) or 0, tonumber(v[3]) or 0, v[4], false, gid, node}
          jc[k] = c
        end
        local dr, dt = join_r[k], join_t[k]
        join_r[k], join_t[k] = nil, nil
        if dr or dt then
          c[2] = c[2] + (dr or 0)
          c[3] = c[3] + (dt or 0)
          c[5] = true
        end
        if c[1] == PENDING then
          local t = topo(gid, node)
          local r, tk = c[2], c[3]
          if tk > 0 and (t.j == 1 or r >= t['in']) then
            c[1] = QUEUED
            dispatch(gid, node, 1, c[4])
          elseif r >= t['in'] then
            c[1] = SKIPPED
            skip(gid, node, 'no incoming edge was taken', ready, loops)
          end
        end
      end
    end
    -- Loops that end are handled before loops that go round (an outer loop's reset wins).
    table.sort(loops, function(x, y) return (x[2] and 1 or 0) < (y[2] and 1 or 0) end)
    local pending = loops
    loops = {}
    for _, l in ipairs(pending) do
      local L = topo(gid, 'b:' .. l[1])
      if l[2] then continue_loop(gid, l[1], L.s, ready) else finish_loop(gid, l[1], ready) end
    end
  end
end

local function fence(gid, node, attempt, iter, states)
  local gs = graph_state(gid)
  if gs == nil or gs >= G_COMPLETED then return nil end
  local v = redis.call('HMGET', nkey(gid), node .. ':s', node .. ':a', node .. ':i')
  local st = tonumber(v[1])
  if tonumber(v[2]) ~= tonumber(attempt) or tonumber(v[3]) ~= tonumber(iter) then return nil end
  for _, s in ipairs(states) do
    if st == s then return st, gs end
  end
  return nil
end

-- Starts a call: its arguments, the shard's keys, the time, and empty per-call state.
local function begin(args)
  ARGV = args
  TAG = args[1]
  WORK, DEAD, TIMERS = TAG .. ':work', TAG .. ':dead', TAG .. ':timers'
  NOTIFY, CONTROL, INDEX, STATS = TAG .. ':notify', TAG .. ':control', TAG .. ':index', TAG .. ':stats'
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  NOW_S = int(NOW)
  notified, controls, topo_cache, gstate, open_delta, jc = {}, {}, {}, {}, {}, {}
  gkeys, nkeys, topo_raw, out_cache, ahead, pending = {}, {}, {}, {}, {}, {}
  join_r, join_t, queued = {}, {}, {}
end
