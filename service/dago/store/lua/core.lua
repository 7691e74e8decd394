-- The core of every dago function: per-call state, key names, reading and writing nodes,
-- the event log, dispatching work, and ending a graph. The library (dago.store.functions)
-- is prelude.lua (generated names), this file, graph.lua, attempts.lua, then each entry
-- script as the body of a registered function, which first calls begin(keys, args). It is
-- loaded once, so the helpers below are made once, not on every call.
--
-- A call's KEYS are the work streams of the shards it works on ('<prefix>:{s<n>}:work');
-- every other key of a shard shares its hash tag, so it lives in the same slot on a Redis
-- Cluster. Key layouts mirror dago/store/keys.py (tests/store/test_keys.py checks them).

-- Set by begin() for each call, and by use_shard() for the shard being worked on.
local KEYS, ARGV
local TAG, K_WORK, K_DEAD, K_TIMERS, K_NOTIFY, K_WATCHED, K_CONTROL, K_INDEX, K_STATS, K_WAKE
local K_ARCHIVE
local GROUP = 'workers'
local NOW, NOW_S

-- Lua turns a number it hands to Redis or joins to a string into text with "%.14g", a
-- floating-point conversion that was ~10% of Redis's instructions per node: integers on the
-- hot path are formatted once, with "%d". The other way, tonumber() runs strtod (~1,400
-- instructions): the hot paths compare the stored text instead (node states, attempts and
-- iterations are always written as plain integers).
local function int(n) return string.format('%d', n) end

local S_PENDING, S_QUEUED, S_RUNNING = NodeStateText.PENDING, NodeStateText.QUEUED, NodeStateText.RUNNING
local S_COMPLETED = NodeStateText.COMPLETED

-- Node field names, as locals: they are joined to a node id several times per transition.
local F_STATE, F_ATTEMPT, F_ITER = NODE.STATE, NODE.ATTEMPT, NODE.ITERATION
local F_STARTED, F_ENDED, F_TIMER = NODE.STARTED, NODE.ENDED, NODE.TIMER
local F_EXEC, F_WORKER = NODE.EXECUTION, NODE.WORKER

-- JSON fragments of stored records, built once from the schema's key names.
local function jkey(first, key) return (first and '{"' or ',"') .. key .. '":' end
local J = {
  REC_STARTED = jkey(true, RECORD.STARTED), REC_ENDED = jkey(false, RECORD.ENDED),
  REC_STATE = jkey(false, RECORD.STATE), REC_WORKER = jkey(false, RECORD.WORKER),
  REC_USAGE = jkey(false, RECORD.USAGE), REC_INPUT = jkey(false, RECORD.INPUT),
  REC_OUTPUT = jkey(false, RECORD.OUTPUT), REC_ERROR = jkey(false, RECORD.ERROR),
  U_IN = jkey(true, USAGE_JSON.INPUT), U_OUT = jkey(false, USAGE_JSON.OUTPUT),
  U_CW = jkey(false, USAGE_JSON.CACHE_WRITE), U_CR = jkey(false, USAGE_JSON.CACHE_READ),
  U_COST = jkey(false, USAGE_JSON.COST),
  D_OUTPUT = jkey(true, DETAIL.OUTPUT), D_USAGE = jkey(false, DETAIL.USAGE),
  D_MS = jkey(false, DETAIL.DURATION_MS), D_ERROR_FIRST = jkey(true, DETAIL.ERROR),
  D_BACKOFF = jkey(false, DETAIL.BACKOFF_MS), D_NEXT = jkey(false, DETAIL.NEXT),
  D_WORKER = jkey(true, DETAIL.WORKER), D_REDELIVERED = jkey(false, DETAIL.REDELIVERED),
  D_USAGE_FIRST = jkey(true, DETAIL.USAGE), D_DEAD = jkey(false, DETAIL.DEAD_LETTER),
  D_PROVIDER = jkey(false, DETAIL.PROVIDER), D_MODEL = jkey(false, DETAIL.MODEL),
}

local function jstr(s) return cjson.encode(s) end

-- A stored error {class, message, retryable} (dago.store.schema.Error).
local function err_json(class, message, retryable)
  return jstr({[ERROR.CLASS] = class, [ERROR.MESSAGE] = message, [ERROR.RETRYABLE] = retryable})
end

-- {reason = text} details (node_skipped, node_cancelled, graph_cancelled).
local function reason_json(text) return jstr({[DETAIL.REASON] = text}) end

-- Per call: the events to write, the graphs to notify, the stops to send, caches.
local notified, controls, topo_cache, topo_raw, out_cache, ahead, pending = {}, {}, {}, {}, {}, {}, {}
-- Work items this call dispatched and took on the current shard: when it leaves some it
-- did not take, flush() wakes the readers waiting for work (K_WAKE).
local dispatched, took
-- Each graph's state is read once (writes go through end_graph and start_graph), and
-- changes to its count of open nodes are summed and applied in one HINCRBY.
local gstate, open_delta = {}, {}
-- What each graph of the call has stored (META.BYTES) against its limit (META.MAX_BYTES,
-- 0: none), as {stored, limit, added by this call}; flush() writes what was added.
local gbytes = {}
-- Each graph's steps as {stored, limit (META.MAX_STEPS, 0: none), started by this call},
-- read once per call by apply's or a start's read of the graph; flush() adds the call's
-- starts in one HINCRBY (an apply that starts inline items and then starts more: one
-- read of the graph and one write, not two of each).
local gsteps = {}
-- Join counters (see settle in graph.lua): {state, received, taken, iteration, dirty, gid,
-- node} per graph and node, written back once per call by flush().
local jc = {}
-- Key names are built once per graph and call (each concatenation makes a new string).
local gkeys, nkeys = {}, {}
-- Edge resolution of this call (see graph.lua): join increments per node, and the nodes
-- queued for settle.
local join_r, join_t, queued = {}, {}, {}

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

-- A node's field names, its id joined to each suffix (state, attempt, iteration, started,
-- timer, execution, budget hold, plan: the order read_ahead reads them in; then ended, output, next, worker,
-- deliveries, deadline, and its edges' name in the topology; then where a map item's name
-- has MAP_ITEMS.SEP, or false), kept by the library for the node ids seen last: runs of one
-- definition share their node ids, and a join is ~0.6k instructions, a lookup a tenth of
-- that (a node's transitions join ~20 names). Bounded: the cache starts over at
-- NAMES_MAX ids.
local NAMES, NAMES_N, NAMES_MAX = {}, 0, 4096

local function names_of(node)
  local f = NAMES[node]
  if f == nil then
    if NAMES_N >= NAMES_MAX then NAMES, NAMES_N = {}, 0 end
    f = {node .. F_STATE, node .. F_ATTEMPT, node .. F_ITER, node .. F_STARTED, node .. F_TIMER,
      node .. F_EXEC, node .. BUDGET.HOLD, node .. NODE.PLAN, node .. F_ENDED, node .. NODE.OUTPUT,
      node .. NODE.NEXT, node .. F_WORKER, node .. NODE.DELIVERIES, node .. NODE.DEADLINE,
      TOPOLOGY.EDGES .. node, string.find(node, MAP_ITEMS.SEP, 1, true) or false}
    NAMES[node] = f
    NAMES_N = NAMES_N + 1
  end
  return f
end

-- The hash holding a node's fields: the run's node hash, or for a map's item
-- ('<map>#<index>', schema.MapItems) its map's item hash '<tag>:g:<gid>:m:<map>' (mirrors
-- GraphKeys.items in keys.py), so a run's node hash never grows with its items.
local function hkey(gid, node)
  local at = names_of(node)[16]
  if not at then return nkey(gid) end
  return TAG .. ':g:' .. gid .. ':m:' .. string.sub(node, 1, at - 1)
end

-- A node's topology (JSON, schema.NodeTopology) or a loop's (schema.LoopTopology, name
-- TOPOLOGY.LOOP .. index), decoded once per call.
local function topo(gid, name)
  local ck = gid .. '\0' .. name
  local t = topo_cache[ck]
  if t == nil then
    t = cjson.decode(redis.call('HGET', gkey(gid) .. ':t', name))
    topo_cache[ck] = t
  end
  return t
end

-- A node's outgoing edges as {index, to, back, owner, single}, all text (the topology's
-- '>node' field; see dago.engine.topology).
-- Both caches are by graph, then node (no key joined per node).
local function out_list(gid, node)
  local per = out_cache[gid]
  if per == nil then per = {}; out_cache[gid] = per end
  local l = per[node]
  if l ~= nil then return l end
  l = {}
  local raws = topo_raw[gid]
  local raw = raws and raws[node]
  if raw == nil then raw = redis.call('HGET', gkey(gid) .. ':t', names_of(node)[15]) end
  for idx, to, back, owner, single in string.gmatch(raw, '([^,;]+),([^,;]+),([^,;]+),([^,;]+),([^,;]+)') do
    l[#l + 1] = {idx, to, back, owner, single}
  end
  per[node] = l
  return l
end

-- Node fields a batch reads (state, attempt, iteration, start time, timer, execution, the
-- budget its execution holds and, to start it, its start plan) are read ahead with one
-- HMGET per graph (read_ahead) instead of one per item. Every write of a node's fields goes through
-- node_set, which forgets what was read ahead for that node, so a later read (node_read)
-- goes to Redis and sees the write. The edge lists of the nodes a batch completes come in
-- the same way.
-- The hold (BUDGET.HOLD) is read with them so that a result or a start whose execution
-- holds nothing (nearly all: only model calls reserve) skips Budget.release's read. A map
-- item's hold is in the run's node hash, not with its fields: its slot says `true` (look).
-- The fields are names_of's first seven (eight with the plan), in its order.

local function read_ahead(gid, nodes, with_edges, with_plan)
  local per = with_plan and 8 or 7
  -- The plain nodes' field names; map items (and `plain`, the other nodes) apart.
  local args, items, plain = {}, nil, nil
  for i = 1, #nodes do
    local n = nodes[i]
    local f = names_of(n)
    if f[16] then
      if items == nil then
        items, plain = {}, {}
        for k = 1, i - 1 do plain[k] = nodes[k] end
      end
      items[#items + 1] = n
    else
      local na = #args
      for j = 1, per do args[na + j] = f[j] end
      if plain then plain[#plain + 1] = n end
    end
  end
  local t = ahead[gid] or {}
  ahead[gid] = t
  local step = per * 200
  if items then
    -- Map items' fields are in their maps' hashes: read one by one (node_read's read).
    for _, n in ipairs(items) do
      local r = redis.call('HMGET', hkey(gid, n), unpack(names_of(n), 1, per))
      r[7] = true
      t[n] = r
    end
    nodes = plain
  end
  for k = 1, #args, step do
    local v = redis.call('HMGET', nkey(gid), unpack(args, k, math.min(k + step - 1, #args)))
    -- Each node's fields in a table made at its size (filled one by one, a table grows
    -- by rehashing at 1, 2, 4 and 8 entries: ~2k instructions a node).
    local plan = per == 8
    for j = 0, #v / per - 1 do
      local b = j * per
      t[nodes[(k - 1) / per + j + 1]] = {v[b + 1], v[b + 2], v[b + 3], v[b + 4], v[b + 5], v[b + 6],
        v[b + 7], plan and v[b + 8] or nil}
    end
  end
  if with_edges then
    for k = 1, #nodes, 1000 do
      local part = {}
      for j = k, math.min(k + 999, #nodes) do part[#part + 1] = names_of(nodes[j])[15] end
      local v = redis.call('HMGET', gkey(gid) .. ':t', unpack(part))
      local raws = topo_raw[gid]
      if raws == nil then raws = {}; topo_raw[gid] = raws end
      for j = 1, #part do
        if v[j] then raws[nodes[k + j - 1]] = v[j] end
      end
    end
  end
end

-- {state, attempt, iteration, start time, timer member, execution, budget hold, start plan}
-- of a node (strings or false; the plan only when read ahead for a start, or read here; the
-- hold `true` for a map item: see read_ahead).
local function node_read(gid, node)
  local t = ahead[gid]
  local r = t and t[node]
  if r then return r end
  local k = hkey(gid, node)
  local f = names_of(node)
  r = redis.call('HMGET', k, f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8])
  if k ~= nkeys[gid] then r[7] = true end
  return r
end

-- The field of an execution's record, and a record without data (start, cancel, reclaim).
local function record_key(node, iter, attempt, exec)
  return node .. NODE.RECORD .. iter .. ':' .. attempt .. ':' .. exec
end

local function short_record(started, ended, state, worker)
  local r = J.REC_STARTED .. started
  if ended then r = r .. J.REC_ENDED .. ended end
  return r .. J.REC_STATE .. state .. J.REC_WORKER .. jstr(worker or '') .. '}'
end

local function node_set(gid, node, ...)
  local t = ahead[gid]
  if t then t[node] = nil end
  redis.call('HSET', hkey(gid, node), ...)
end

-- Groups a batch's items by graph: {gid = {node, ...}} for read_ahead. A is the argument
-- array, `first` the index of the first item and L the item's layout (prelude's ITEM).
local function by_graph(A, first, L)
  local g = {}
  for i = first, #A, L.SIZE do
    local gid, node = A[i + L.GRAPH_ID], A[i + L.NODE]
    local l = g[gid]
    if l == nil then l = {}; g[gid] = l end
    l[#l + 1] = node
  end
  return g
end

-- The graph's state (a GraphState number), or nil when the graph is unknown or expired.
local function graph_state(gid)
  local s = gstate[gid]
  if s == nil then
    s = tonumber(redis.call('HGET', gkey(gid), META.STATE)) or false
    gstate[gid] = s
  end
  return s or nil
end

-- Whether `n` more bytes fit in the graph's limit; if they do, they are counted.
local function bytes_fit(gid, n)
  local b = gbytes[gid]
  if b == nil then
    local v = redis.call('HMGET', gkey(gid), META.BYTES, META.MAX_BYTES)
    b = {tonumber(v[1]) or 0, tonumber(v[2]) or 0, 0}
    gbytes[gid] = b
  end
  if b[2] > 0 and b[1] + b[3] + n > b[2] then return false end
  b[3] = b[3] + n
  return true
end

local function open_add(gid, d)
  open_delta[gid] = (open_delta[gid] or 0) + d
end

-- Applies the graph's pending change of its open count; returns the count.
local function open_apply(gid)
  local d = open_delta[gid] or 0
  open_delta[gid] = nil
  return tonumber(redis.call('HINCRBY', gkey(gid), META.OPEN, d))
end

-- Appends one event to the graph's log, packed as schema.Event says. Events are written
-- by flush(), which every entry script calls before returning after a change (and before
-- switching shards): one HINCRBY of the graph's seq and one XADD per graph and call.
local E_SEP = EVENT.SEP
local E_GRAPH = E_SEP .. E_SEP .. E_SEP .. E_SEP
-- Field names of an entry's events (1, 2, ...), each made once (by the first call that
-- needs it: a library's loading may not call string functions).
local E_NAMES = {}

local function emit(gid, kind, node, attempt, iter, detail)
  local ev
  if node then
    ev = kind .. E_SEP .. NOW_S .. E_SEP .. node .. E_SEP .. (attempt or '') .. E_SEP .. (iter or '')
      .. E_SEP .. (detail or '')
  else
    ev = kind .. E_SEP .. NOW_S .. E_GRAPH .. (detail or '')
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
    redis.call('HSET', nkey(c[6]), c[7] .. NODE.RECEIVED, c[2], c[7] .. NODE.TAKEN, c[3])
    c[5] = false
  end
end

-- Fair dispatch between namespaces (fair.lua): dispatch queues work items there, and
-- flush writes the queued items a call has buffered.
local Fair = {}

-- flush's events: each graph's new events (every graph with some is in `notified`) and
-- the notifications that wake its watchers.
local function flush_events()
  local firsts = {}
  for gid, list in pairs(pending) do
    local ek = gkey(gid) .. ':e'
    -- An entry's id is the seq of its last event; the graph's seq field is only ever
    -- written here, so ids always grow.
    local seq = redis.call('HINCRBY', gkey(gid), META.SEQ, #list) - #list
    firsts[gid] = seq + 1
    for k = 1, #list, EVENT.PER_ENTRY do
      local n = math.min(EVENT.PER_ENTRY, #list - k + 1)
      local args = {}
      for j = 1, n do
        local name = E_NAMES[j]
        if name == nil then name = int(j); E_NAMES[j] = name end
        args[2 * j - 1] = name
        args[2 * j] = list[k + j - 1]
      end
      seq = seq + n
      redis.call('XADD', ek, '0-' .. int(seq), unpack(args))
    end
  end
  -- Only graphs an API process watches are named (api/watch.py registers them before it
  -- reads their log, so no growth after that read goes unnamed), with their new events
  -- when those are small (schema.Notify).
  for gid in pairs(notified) do
    local until_ms = redis.call('ZSCORE', K_WATCHED, gid)
    if until_ms and tonumber(until_ms) >= NOW then
      local list = pending[gid]
      local args = {'MAXLEN', '~', 10000, '*', WORK.GRAPH, gid}
      local size = 0
      for _, ev in ipairs(list or {}) do size = size + #ev end
      if list and #list <= EVENT.PER_ENTRY and size <= NOTIFY.CARRY_BYTES then
        args[#args + 1] = NOTIFY.FIRST
        args[#args + 1] = int(firsts[gid])
        for j, ev in ipairs(list) do
          args[#args + 1] = E_NAMES[j]
          args[#args + 1] = ev
        end
      end
      redis.call('XADD', K_NOTIFY, unpack(args))
    end
  end
  pending = {}
  notified = {}
end

-- Writes what the call has pending on the current shard: join counters, open counts, the
-- events (and the notifications that wake watchers), the stops for workers.
local function flush()
  Fair.flush()
  -- Each table is looked at (and made again) only when it holds something: a call's fixed
  -- cost was mostly empty tables made and walked (~0.8k instructions a table).
  if next(jc) ~= nil then
    for _, c in pairs(jc) do jc_write(c) end
    jc = {}
  end
  if next(open_delta) ~= nil then
    for gid, d in pairs(open_delta) do
      if d ~= 0 then redis.call('HINCRBY', gkey(gid), META.OPEN, d) end
    end
    open_delta = {}
  end
  if next(gbytes) ~= nil then
    for gid, b in pairs(gbytes) do
      if b[3] ~= 0 then redis.call('HINCRBY', gkey(gid), META.BYTES, b[3]) end
    end
    gbytes = {}
  end
  if next(gsteps) ~= nil then
    for gid, g in pairs(gsteps) do
      if g[3] > 0 then redis.call('HINCRBY', gkey(gid), META.STEPS, g[3]) end
    end
    gsteps = {}
  end
  if next(notified) ~= nil then flush_events() end
  if next(controls) ~= nil then
    for _, v in pairs(controls) do
      redis.call('XADD', K_CONTROL, 'MAXLEN', '~', 1000, '*', WORK.GRAPH, v[1], WORK.NODE, v[2],
        WORK.ATTEMPT, v[3], WORK.EXECUTION, v[4])
    end
    controls = {}
  end
  -- Readers blocked for work wake only for work left behind: a step that takes the items it
  -- dispatched (a chain) wakes nobody.
  if dispatched > took then redis.call('XADD', K_WAKE, 'MAXLEN', '~', 100, '*', WORK.GRAPH, '') end
  dispatched, took = 0, 0
end

-- Tells the workers to stop a graph's running attempts (node nil: all of them).
local function stop_work(gid, node, attempt, exec)
  controls[gid .. '\0' .. (node or '') .. '\0' .. (exec or '')] = {gid, node or '', attempt or '', exec or ''}
end

-- Each shard's key names by its work stream's, made by the first call that works on it
-- and kept by the library (a few per shard: ~6k instructions a call less).
local SHARD_KEYS = {}

-- Works on shard i of the call's KEYS from now on (after flush() of the previous one).
local function use_shard(i)
  K_WORK = KEYS[i]
  local k = SHARD_KEYS[K_WORK]
  if k == nil then
    local tag = string.sub(K_WORK, 1, -6)
    k = {tag, tag .. ':dead', tag .. ':timers', tag .. ':notify', tag .. ':watched', tag .. ':control',
      tag .. ':index', tag .. ':stats', tag .. ':wake', tag .. ':archive'}
    SHARD_KEYS[K_WORK] = k
  end
  TAG, K_DEAD, K_TIMERS, K_NOTIFY, K_WATCHED = k[1], k[2], k[3], k[4], k[5]
  K_CONTROL, K_INDEX, K_STATS, K_WAKE, K_ARCHIVE = k[6], k[7], k[8], k[9], k[10]
end

-- Each namespace lists its own graphs: the default one uses the shard's plain index, any
-- other its own family (mirrors ShardKeys.index / ShardKeys.request in dago/store/keys.py).
local function nsindex(ns)
  if not ns or ns == '' or ns == 'default' then return K_INDEX end
  return TAG .. ':ns:' .. ns .. ':index'
end

-- A namespace gets its place in the shard's set of namespaces (ShardKeys.namespaces) with
-- its index: an operator's listing of every namespace reads the indexes this set names.
local function index_created(ns, gid)
  local idx = nsindex(ns)
  redis.call('ZADD', idx, NOW, gid)
  redis.call('ZADD', idx .. ':' .. GraphState.SUBMITTED, NOW, gid)
  redis.call('SADD', TAG .. ':namespaces', (ns == nil or ns == '') and 'default' or ns)
end

local function reqkey(ns, rid)
  if not ns or ns == '' or ns == 'default' then return TAG .. ':req:' .. rid end
  return TAG .. ':ns:' .. ns .. ':req:' .. rid
end

local function index_move(gid, from_state, to_state)
  local v = redis.call('HMGET', gkey(gid), META.CREATED, META.NAMESPACE)
  local idx = nsindex(v[2])
  redis.call('ZREM', idx .. ':' .. from_state, gid)
  redis.call('ZADD', idx .. ':' .. to_state, v[1], gid)
end

-- Queues an attempt of a node as a new work item (its executions count from 1 when it
-- starts: see start_batch).
local function dispatch(gid, node, attempt, iter)
  if type(attempt) == 'number' then attempt = int(attempt) end
  if type(iter) == 'number' then iter = int(iter) end
  local f = names_of(node)
  node_set(gid, node, f[1], S_QUEUED, f[2], attempt, f[3], iter)
  Fair.push(gid, node, attempt, iter)
  dispatched = dispatched + 1
end

-- Creates run `gid` (submit.lua: a run a client submitted; Child.create: a subgraph node's
-- child run; one home, so both runs are made alike): its graph hash, its topology (the
-- arguments from A.FIRST), its pending nodes, the submitted count, its namespace's indexes
-- and its graph_submitted event. `A`: the caller's ARG table (its NAME, DEFINITION,
-- NODE_IDS, START_PLANS, ENTRIES, MAX_*, DEF_* arguments are read); `inputs`: JSON; `ns`:
-- its namespace; `meta`: the graph fields only the caller knows, as field/value pairs
-- (written in the same HSET, before anything reads them); `detail`: the event's detail
-- beyond the run's name and entries. Returns the entry nodes: the caller dispatches them,
-- after whatever it finishes first (a fork's reused nodes).
local function create_run(gid, A, inputs, ns, meta, detail)
  local gk, nk = gkey(gid), nkey(gid)
  local tk = gk .. ':t'
  local ids = cjson.decode(ARGV[A.NODE_IDS])
  local plans = cjson.decode(ARGV[A.START_PLANS])
  local entries = cjson.decode(ARGV[A.ENTRIES])
  local fv = {META.STATE, GraphState.SUBMITTED, META.NAME, ARGV[A.NAME], META.CREATED, NOW,
    META.SEQ, 0, META.STEPS, 0, META.OPEN, #ids, META.DEFINITION, ARGV[A.DEFINITION],
    META.INPUTS, inputs, META.NODE_IDS, ARGV[A.NODE_IDS], META.MAX_STEPS, ARGV[A.MAX_STEPS],
    META.MAX_TOKENS, ARGV[A.MAX_TOKENS], META.MAX_COST, ARGV[A.MAX_COST], META.NAMESPACE, ns,
    META.BYTES, #ARGV[A.DEFINITION] + #inputs}
  if ARGV[A.DEF_NAME] ~= '' then
    local n = #fv
    fv[n + 1] = META.DEF_NAME; fv[n + 2] = ARGV[A.DEF_NAME]
    fv[n + 3] = META.DEF_VERSION; fv[n + 4] = ARGV[A.DEF_VERSION]
    fv[n + 5] = META.DEF_DIGEST; fv[n + 6] = ARGV[A.DEF_DIGEST]
  end
  for _, x in ipairs(meta) do fv[#fv + 1] = x end
  redis.call('HSET', gk, unpack(fv))
  -- Node and topology fields are written a few hundred per HSET, not one command per node.
  local function hset_all(key, list)
    for k = 1, #list, 600 do
      redis.call('HSET', key, unpack(list, k, math.min(k + 599, #list)))
    end
  end
  fv = {}
  for i = A.FIRST, #ARGV do fv[#fv + 1] = ARGV[i] end
  hset_all(tk, fv)
  fv = {}
  for k, node in ipairs(ids) do
    local n = #fv
    fv[n + 1] = node .. F_STATE; fv[n + 2] = S_PENDING
    fv[n + 3] = node .. F_ATTEMPT; fv[n + 4] = '0'
    fv[n + 5] = node .. F_ITER; fv[n + 6] = '1'
    fv[n + 7] = node .. NODE.PLAN; fv[n + 8] = plans[k]
  end
  hset_all(nk, fv)
  -- The node hash gets ~10 fields per node and every transition reads and writes it several
  -- times. Redis keeps hashes of up to hash-max-listpack-entries (512 by default) fields as a
  -- listpack, where each access scans the fields one by one: for a graph of more than a few
  -- nodes that made each command cost several times its price. A value longer than
  -- hash-max-listpack-value (64) turns the hash into a hash table for good (deleting it does
  -- not turn it back), so every access is O(1). The topology hash likewise.
  if #ids > 4 then
    local long = string.rep('.', 65)
    for _, k in ipairs({nk, tk}) do
      redis.call('HSET', k, '~', long)
      redis.call('HDEL', k, '~')
    end
  end
  redis.call('HINCRBY', K_STATS, STATS.SUBMITTED, 1)
  index_created(ns, gid)
  gstate[gid] = GraphState.SUBMITTED
  detail[DETAIL.NAME] = ARGV[A.NAME]
  detail[DETAIL.ENTRIES] = entries
  emit(gid, EventKind.GRAPH_SUBMITTED, nil, nil, nil, jstr(detail))
  return entries
end

local function timer_key(kind, gid, node, iter, attempt)
  return kind .. '|' .. gid .. '|' .. node .. '|' .. iter .. '|' .. attempt
end

-- A worker's report about execution `exec` of a node's (iteration, attempt) that parks or
-- holds it (wait, spawn, expand, throttle, reserve) applies only while that execution is
-- RUNNING in a live graph: its node_read fields then, else nil (the report is stale).
local function running_exec(gid, node, attempt, iter, exec)
  local gs = graph_state(gid)
  if gs == nil or gs >= GraphState.COMPLETED then return nil end
  local v = node_read(gid, node)
  if v[1] == S_RUNNING and v[2] == attempt and v[3] == iter and v[6] == exec then return v end
  return nil
end

-- A parked attempt no longer runs on a worker: its own timeout (v: its node_read fields)
-- is over.
local function end_attempt_timer(gid, node, iter, attempt, v)
  if not v[5] then return end
  local tm = timer_key(TIMER.TIMEOUT, gid, node, iter, attempt)
  if v[5] == tm then redis.call('ZREM', K_TIMERS, tm) end
  redis.call('HDEL', hkey(gid, node), node .. F_TIMER)
end

-- Counts a finished graph for the metrics (dago.store.stats): by end state, and in the
-- duration histogram (bounds: schema.GRAPH_DURATION_BUCKETS).
local function record_end(gk, state)
  local secs = (NOW - (tonumber(redis.call('HGET', gk, META.CREATED)) or NOW)) / 1000
  local b = #DURATION_BOUNDS
  for k, le in ipairs(DURATION_BOUNDS) do
    if secs <= le then b = k - 1; break end
  end
  redis.call('HINCRBY', K_STATS, STATS.FINISHED .. GraphStateName[state], 1)
  redis.call('HINCRBY', K_STATS, STATS.DURATION .. b, 1)
  redis.call('HINCRBYFLOAT', K_STATS, STATS.DURATION_SUM, secs)
end

-- Lets a finished graph go: its keys (and its request_id's record) expire after the
-- retention period from now, and the sweep drops it from its indexes then.
local function expire_graph(gid)
  local gk = gkey(gid)
  local ttl = tonumber(redis.call('HGET', gk, META.RETENTION))
  if ttl == nil then return end  -- its keys are gone already
  for _, suffix in ipairs({'', ':n', ':t', ':e', ':c'}) do
    redis.call('EXPIRE', gk .. suffix, ttl)
  end
  -- Its maps' item hashes (META.MAPS: the map nodes that expanded).
  for map in string.gmatch(redis.call('HGET', gk, META.MAPS) or '', '[^,]+') do
    redis.call('EXPIRE', gk .. ':m:' .. map, ttl)
  end
  local r = redis.call('HMGET', gk, META.REQUEST_ID, META.NAMESPACE)
  if r[1] and r[1] ~= '' then redis.call('EXPIRE', reqkey(r[2], r[1]), ttl) end
  local xs = TIMER.EXPIRE .. '|' .. gid
  if r[2] and r[2] ~= '' and r[2] ~= 'default' then xs = xs .. '|' .. r[2] end
  redis.call('ZADD', K_TIMERS, NOW + ttl * 1000, xs)
end

-- Wait nodes (waits.lua has the rest): their index and timeout, taken away here too when a
-- graph ends with a node waiting. One table, not more locals: the library is one chunk and
-- Lua allows a chunk 200 of them.
local Waits = {}
-- Run budgets (budget.lua has them); declared here for end_graph.
local Budget = {}

-- Child runs (subgraph nodes; children.lua has the rest): ending a graph records a child's
-- outcome for its parent node, and cancels the children of its waiting nodes.
local Child = {}

-- The shard's inbox of a namespace's waiting nodes (mirrors ShardKeys.waits in keys.py).
function Waits.index(ns)
  if not ns or ns == '' or ns == 'default' then return TAG .. ':waits' end
  return TAG .. ':ns:' .. ns .. ':waits'
end

function Waits.timer(gid, node, iter)
  return TIMER.WAIT .. '|' .. gid .. '|' .. node .. '|' .. iter
end

-- A waiting node stops waiting (decided, cancelled, its graph ended): out of the inbox, its
-- timeout off the timers, its wait forgotten, one less open wait in the stats.
function Waits.clear(gid, node, iter)
  local ns = redis.call('HGET', gkey(gid), META.NAMESPACE)
  if redis.call('ZREM', Waits.index(ns), gid .. '|' .. node) == 1 then
    redis.call('HINCRBY', K_STATS, STATS.WAITING, -1)
  end
  redis.call('ZREM', K_TIMERS, Waits.timer(gid, node, iter))
  redis.call('HDEL', nkey(gid), node .. NODE.WAIT)
end

-- Ends a graph: every node still open is cancelled (running) or skipped (pending),
-- workers are told to stop, and the keys expire after the retention period; a graph
-- submitted with archiving on waits, without expiry, in the shard's archive queue until
-- the archiver has written it to PostgreSQL (see archived.lua).
local function end_graph(gid, state, kind, detail, err)
  local gk = gkey(gid)
  local old = graph_state(gid)
  if old >= GraphState.COMPLETED then return end
  Budget.ended(gid)
  gstate[gid] = state
  open_delta[gid] = nil
  redis.call('HSET', gk, META.STATE, state, META.ENDED, NOW)
  record_end(gk, state)
  if err then redis.call('HSET', gk, META.ERROR, err) end
  index_move(gid, old, state)
  local nk = nkey(gid)
  -- A graph completes when no node is open any more: nothing to cancel or skip.
  local ids = {}
  if state ~= GraphState.COMPLETED then ids = cjson.decode(redis.call('HGET', gk, META.NODE_IDS)) end
  local why = reason_json((state == GraphState.CANCELLED) and 'graph cancelled' or 'graph failed')
  local stopped = false
  for _, node in ipairs(ids) do
    local v = redis.call('HMGET', nk, node .. F_STATE, node .. F_ATTEMPT, node .. F_ITER,
      node .. F_STARTED, node .. F_EXEC, node .. F_WORKER)
    local st = tonumber(v[1])
    if st == NodeState.PENDING then
      node_set(gid, node, node .. F_STATE, NodeState.SKIPPED, node .. F_ENDED, NOW)
      emit(gid, EventKind.NODE_SKIPPED, node, v[2], v[3], why)
    elseif st == NodeState.RUNNING then
      -- The running execution's record ends with it.
      node_set(gid, node, node .. F_STATE, NodeState.CANCELLED, node .. F_ENDED, NOW,
        record_key(node, v[3], v[2], v[5]), short_record(v[4], NOW_S, NodeStateText.CANCELLED, v[6]))
      emit(gid, EventKind.NODE_CANCELLED, node, v[2], v[3], why)
      stopped = true
    elseif st and (st < NodeState.COMPLETED or st == NodeState.DEAD_LETTERED) then
      if st == NodeState.WAITING then Waits.clear(gid, node, v[3]); Child.cancel(gid, node) end
      node_set(gid, node, node .. F_STATE, NodeState.CANCELLED, node .. F_ENDED, NOW)
      emit(gid, EventKind.NODE_CANCELLED, node, v[2], v[3], why)
    end
  end
  redis.call('HSET', gk, META.OPEN, 0)
  if state ~= GraphState.COMPLETED then Child.cancel_all(gid) end
  emit(gid, kind, nil, nil, nil, detail)
  Child.ended(gid, state)
  if stopped then stop_work(gid, nil, nil) end
  -- A run to archive keeps every key until it is in PostgreSQL: an archive outage delays
  -- its expiry, it never loses it. Queued by end time, so the oldest go first.
  if redis.call('HGET', gk, META.ARCHIVE) == '1' then
    redis.call('ZADD', K_ARCHIVE, NOW, gid)
  else
    expire_graph(gid)
  end
  redis.call('ZREM', K_TIMERS, TIMER.DEADLINE .. '|' .. gid)
end

-- A usage object (schema.UsageJson) from the graph's counters.
local function usage_json(gk)
  local u = redis.call('HMGET', gk, USAGE.INPUT, USAGE.OUTPUT, USAGE.CACHE_WRITE, USAGE.CACHE_READ, USAGE.COST)
  return J.U_IN .. (u[1] or 0) .. J.U_OUT .. (u[2] or 0) .. J.U_CW .. (u[3] or 0)
    .. J.U_CR .. (u[4] or 0) .. J.U_COST .. (u[5] or 0) .. '}'
end

local function fail_graph(gid, err, node)
  end_graph(gid, GraphState.FAILED, EventKind.GRAPH_FAILED,
    J.D_ERROR_FIRST .. err .. J.D_NEXT .. jstr(node or '') .. '}', err)
end

local function maybe_finish(gid)
  local st = graph_state(gid)
  if st and st < GraphState.COMPLETED and open_apply(gid) <= 0 then
    end_graph(gid, GraphState.COMPLETED, EventKind.GRAPH_COMPLETED, J.D_USAGE_FIRST .. usage_json(gkey(gid)) .. '}', nil)
  end
end

-- The fence of every transition of a node attempt: the graph still runs and the node is
-- at this attempt and iteration, in one of `states`. A late or duplicate report of an
-- attempt that is no longer current (a redelivery, a worker that was presumed dead)
-- changes nothing. Returns the node's and the graph's state, or nil.
local function fence(gid, node, attempt, iter, states)
  local gs = graph_state(gid)
  if gs == nil or gs >= GraphState.COMPLETED then return nil end
  local f = names_of(node)
  local v = redis.call('HMGET', hkey(gid, node), f[1], f[2], f[3])
  local st = tonumber(v[1])
  if tonumber(v[2]) ~= tonumber(attempt) or tonumber(v[3]) ~= tonumber(iter) then return nil end
  for _, s in ipairs(states) do
    if st == s then return st, gs end
  end
  return nil
end

-- Starts a call: its keys and arguments, the time, and empty per-call state; the first
-- shard is the current one.
local function begin(keys, args)
  KEYS, ARGV = keys, args
  local t = redis.call('TIME')
  NOW = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  NOW_S = int(NOW)
  -- The per-call tables start empty: one left empty by the call before (flush() empties
  -- its own; most caches go unused by most calls) is kept rather than made again (fewer
  -- tables made also means less garbage to collect: ~5k instructions a call less).
  if next(notified) ~= nil then notified = {} end
  if next(controls) ~= nil then controls = {} end
  if next(topo_cache) ~= nil then topo_cache = {} end
  if next(gstate) ~= nil then gstate = {} end
  if next(open_delta) ~= nil then open_delta = {} end
  if next(jc) ~= nil then jc = {} end
  if next(gbytes) ~= nil then gbytes = {} end
  if next(gsteps) ~= nil then gsteps = {} end
  if next(gkeys) ~= nil then gkeys = {} end
  if next(nkeys) ~= nil then nkeys = {} end
  if next(topo_raw) ~= nil then topo_raw = {} end
  if next(out_cache) ~= nil then out_cache = {} end
  if next(ahead) ~= nil then ahead = {} end
  if next(pending) ~= nil then pending = {} end
  if next(join_r) ~= nil then join_r = {} end
  if next(join_t) ~= nil then join_t = {} end
  if next(queued) ~= nil then queued = {} end
  dispatched, took = 0, 0
  Fair.reset()
  use_shard(1)
end
