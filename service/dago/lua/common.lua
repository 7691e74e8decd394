-- Shared by every dago script; each entry script is this file followed by its own body.
-- ARGV[1] is the shard's hash-tagged base "<prefix>:{s<n>}"; KEYS[1] is the shard's work
-- stream, declared so the script is routed to the right node on Redis Cluster. Every other
-- key shares the hash tag, so it lives in the same slot. Key layouts mirror dago/keys.py.

local TAG = ARGV[1]
local WORK = TAG .. ':work'
local DEAD = TAG .. ':dead'
local TIMERS = TAG .. ':timers'
local NOTIFY = TAG .. ':notify'
local CONTROL = TAG .. ':control'
local INDEX = TAG .. ':index'
local STATS = TAG .. ':stats'
local GROUP = 'workers'

-- dago.v1.NodeState and dago.v1.GraphState numbers.
local PENDING, QUEUED, RUNNING, RETRYING, COMPLETED, FAILED, SKIPPED, CANCELLED = 1, 2, 3, 4, 6, 7, 8, 9
local DEAD_LETTERED = 10
local G_SUBMITTED, G_RUNNING, G_COMPLETED, G_FAILED, G_CANCELLED = 1, 2, 3, 4, 5

local T = redis.call('TIME')
local NOW = tonumber(T[1]) * 1000 + math.floor(tonumber(T[2]) / 1000)

local notified = {}
local controls = {}
local topo_cache = {}

local function gkey(gid) return TAG .. ':g:' .. gid end
local function nkey(gid) return TAG .. ':g:' .. gid .. ':n' end

local function topo(gid, name)
  local ck = gid .. '\0' .. name
  local t = topo_cache[ck]
  if t == nil then
    t = cjson.decode(redis.call('HGET', gkey(gid) .. ':t', name))
    topo_cache[ck] = t
  end
  return t
end

local function jstr(s) return cjson.encode(s) end

-- Events of this script run, per graph in order; flush() writes them.
local pending = {}

-- Appends one event to the graph's log (seq is the stream id's sequence part). The event is
-- written by flush(), which every script calls before returning after a change, with the
-- seqs of all of a graph's events taken by one HINCRBY (one command per graph, not per event).
local function emit(gid, etype, node, attempt, iter, detail)
  local ev = {'t', etype, 'ts', NOW}
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

local function flush()
  for gid, list in pairs(pending) do
    local ek = gkey(gid) .. ':e'
    local seq = redis.call('HINCRBY', gkey(gid), 'seq', #list) - #list
    for _, ev in ipairs(list) do
      seq = seq + 1
      redis.call('XADD', ek, '0-' .. seq, unpack(ev))
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
  redis.call('HSET', nkey(gid), node .. ':s', QUEUED, node .. ':a', attempt, node .. ':i', iter)
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
  local old = tonumber(redis.call('HGET', gk, 'state'))
  if old >= G_COMPLETED then return end
  redis.call('HSET', gk, 'state', state, 'ended', NOW)
  record_end(gk, state)
  if err then redis.call('HSET', gk, 'err', err) end
  index_move(gid, old, state)
  local nk = nkey(gid)
  local ids = cjson.decode(redis.call('HGET', gk, 'ids'))
  local why = (state == G_CANCELLED) and 'graph cancelled' or 'graph failed'
  local stopped = false
  for _, node in ipairs(ids) do
    local v = redis.call('HMGET', nk, node .. ':s', node .. ':a', node .. ':i')
    local st = tonumber(v[1])
    if st == PENDING then
      redis.call('HSET', nk, node .. ':s', SKIPPED, node .. ':et', NOW)
      emit(gid, 'node_skipped', node, v[2], v[3], jstr({reason = why}))
    elseif st and (st < COMPLETED or st == DEAD_LETTERED) then
      redis.call('HSET', nk, node .. ':s', CANCELLED, node .. ':et', NOW)
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
  local gk = gkey(gid)
  local v = redis.call('HMGET', gk, 'state', 'open')
  local st = tonumber(v[1])
  if st and st < G_COMPLETED and tonumber(v[2]) <= 0 then
    end_graph(gid, G_COMPLETED, 'graph_completed', '{"u":' .. usage_json(gk) .. '}', nil)
  end
end

-- Edge resolution and join bookkeeping. `ready` collects nodes whose join may now fire.
local function resolve(gid, idx, to, taken, ready)
  local nk = nkey(gid)
  if redis.call('HSETNX', nk, 'e:' .. idx, taken and 1 or 0) == 0 then return end
  redis.call('HINCRBY', nk, to .. ':r', 1)
  if taken then redis.call('HINCRBY', nk, to .. ':t', 1) end
  ready[#ready + 1] = to
end

-- A loop that will not run again resolves the exits it deferred: untaken so far, untaken now.
local function finish_loop(gid, b, ready)
  local L = topo(gid, 'b:' .. b)
  for _, x in ipairs(L.x) do resolve(gid, x[1], x[2], false, ready) end
end

local function out_edges(gid, node, taken, ready, loops)
  for _, e in ipairs(topo(gid, node).o) do
    local idx, to, back, owner = e[1], e[2], e[3], e[4]
    if back == 1 then
      loops[#loops + 1] = {idx, taken[idx] == true}
    elseif taken[idx] then
      resolve(gid, idx, to, true, ready)
    elseif owner == 0 then
      -- An exit edge untaken inside a loop waits for the loop's end (finish_loop).
      resolve(gid, idx, to, false, ready)
    end
  end
end

local function skip(gid, node, reason, ready, loops)
  local nk = nkey(gid)
  local v = redis.call('HMGET', nk, node .. ':a', node .. ':i')
  redis.call('HSET', nk, node .. ':s', SKIPPED, node .. ':et', NOW)
  redis.call('HINCRBY', gkey(gid), 'open', -1)
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
    redis.call('HSET', nk, v .. ':s', PENDING, v .. ':i', iter, v .. ':a', 0)
    if v ~= head then redis.call('HSET', nk, v .. ':r', 0, v .. ':t', 0) end
  end
  redis.call('HINCRBY', gkey(gid), 'open', reopened)
  emit(gid, 'loop_iteration', head, 0, hi + 1, jstr({iteration = hi + 1, from = from}))
  dispatch(gid, head, 1, hi + 1)
end

-- Fires joins until nothing changes: skips propagate, loops end or go round.
local function settle(gid, ready, loops)
  while #ready > 0 or #loops > 0 do
    while #ready > 0 do
      local node = table.remove(ready)
      local nk = nkey(gid)
      local v = redis.call('HMGET', nk, node .. ':s', node .. ':r', node .. ':t', node .. ':i')
      if tonumber(v[1]) == PENDING then
        local t = topo(gid, node)
        local r, tk = tonumber(v[2]) or 0, tonumber(v[3]) or 0
        if tk > 0 and (t.j == 1 or r >= t['in']) then
          dispatch(gid, node, 1, v[4])
        elseif r >= t['in'] then
          skip(gid, node, 'no incoming edge was taken', ready, loops)
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
  local gs = tonumber(redis.call('HGET', gkey(gid), 'state'))
  if gs == nil or gs >= G_COMPLETED then return nil end
  local v = redis.call('HMGET', nkey(gid), node .. ':s', node .. ':a', node .. ':i')
  local st = tonumber(v[1])
  if tonumber(v[2]) ~= tonumber(attempt) or tonumber(v[3]) ~= tonumber(iter) then return nil end
  for _, s in ipairs(states) do
    if st == s then return st, gs end
  end
  return nil
end
