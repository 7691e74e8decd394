-- What runs next: resolving a finished node's outgoing edges, firing joins, skipping nodes
-- none of whose incoming edges was taken (skips propagate), and loops that go round or end.
-- The graph's shape comes from its topology (dago.engine.topology); the rules are those of
-- docs/semantics.md.

local NO_EDGE_TAKEN = 'no incoming edge was taken'

-- Edge resolution and join bookkeeping. `ready` collects nodes whose join may now fire:
-- a node id (its join counters changed; each id is queued once until settle looks at it),
-- or {id, taken, flag} for the only edge into a node that is no loop's exit (topology
-- flag 1: the node is in no loop, 2: in a loop's body), which fires or skips the node at
-- once: such an edge resolves once per iteration (its source's transition is fenced), so
-- it needs neither a resolved-mark nor counters, and with flag 1 not even a read.
-- Join counter increments are summed per node and applied when settle looks at it. Only a
-- loop's exit edge can be resolved twice (taken inside the loop, then untaken by the loop's
-- end, finish_loop): `exit` marks it resolved (NODE.EDGE_RESOLVED) so the second time
-- counts nothing.
local function resolve(gid, idx, to, taken, ready, single, exit)
  if single == '1' or single == '2' then
    ready[#ready + 1] = {to, taken, single}
    return
  end
  if exit and redis.call('HSETNX', nkey(gid), NODE.EDGE_RESOLVED .. idx, taken and 1 or 0) == 0 then return end
  local k = gid .. '\0' .. to
  join_r[k] = (join_r[k] or 0) + 1
  if taken then join_t[k] = (join_t[k] or 0) + 1 end
  if not queued[k] then
    queued[k] = true
    ready[#ready + 1] = to
  end
end

local function loop_topo(gid, b)
  return topo(gid, TOPOLOGY.LOOP .. b)
end

-- A loop that will not run again resolves the exits it deferred: untaken so far, untaken now.
local function finish_loop(gid, b, ready)
  for _, x in ipairs(loop_topo(gid, b)[LOOP_TOPOLOGY.EXITS]) do
    resolve(gid, x[1], x[2], false, ready, nil, true)
  end
end

local function out_edges(gid, node, taken, ready, loops)
  local l = out_list(gid, node)
  for k = 1, #l do
    local e = l[k]
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

-- A node a fork reuses (see submit.lua): its outgoing edges into nodes that run again
-- resolve as they did in the source run (taken: the set of edge indexes it took); edges
-- into other reused nodes, and back edges (a loop is reused whole or run again whole), do
-- not count.
local function reuse_edges(gid, node, taken, reused, ready)
  for _, e in ipairs(out_list(gid, node)) do
    local idx, to, back, owner = e[1], e[2], e[3], e[4]
    if back ~= '1' and not reused[to] then
      resolve(gid, idx, to, taken[idx] == true, ready, e[5], owner ~= '0')
    end
  end
end

local function skip(gid, node, reason, ready, loops)
  local v = redis.call('HMGET', nkey(gid), node .. F_ATTEMPT, node .. F_ITER)
  node_set(gid, node, node .. F_STATE, NodeState.SKIPPED, node .. F_ENDED, NOW)
  open_add(gid, -1)
  emit(gid, EventKind.NODE_SKIPPED, node, v[1], v[2], reason_json(reason))
  out_edges(gid, node, {}, ready, loops)
end

local function loop_event(gid, head, iter, from, exhausted)
  local d = {[DETAIL.ITERATION] = iter, [DETAIL.FROM] = from}
  if exhausted then d[DETAIL.EXHAUSTED] = true end
  emit(gid, EventKind.LOOP_ITERATION, head, 0, iter, jstr(d))
end

-- A back edge was taken: the loop's body goes round once more (every node of it pending
-- at the next iteration, the head dispatched), unless the head reached max_iterations.
local function continue_loop(gid, b, from, ready)
  local L = loop_topo(gid, b)
  local head = L[LOOP_TOPOLOGY.HEAD]
  local nk = nkey(gid)
  local hi = tonumber(redis.call('HGET', nk, head .. F_ITER))
  if hi >= topo(gid, head)[NODE_TOPOLOGY.MAX_ITERATIONS] then
    loop_event(gid, head, hi, from, true)
    finish_loop(gid, b, ready)
    return
  end
  for _, idx in ipairs(L[LOOP_TOPOLOGY.INTERNAL]) do redis.call('HDEL', nk, NODE.EDGE_RESOLVED .. idx) end
  local reopened = 0
  for _, v in ipairs(L[LOOP_TOPOLOGY.BODY]) do
    local st = tonumber(redis.call('HGET', nk, v .. F_STATE))
    if st >= NodeState.COMPLETED then reopened = reopened + 1 end
    local iter = tonumber(redis.call('HGET', nk, v .. F_ITER)) + 1
    node_set(gid, v, v .. F_STATE, NodeState.PENDING, v .. F_ITER, iter, v .. F_ATTEMPT, 0)
    local c = jc[gid .. '\0' .. v]
    if c then
      jc_write(c)
      jc[gid .. '\0' .. v] = nil
    end
    if v ~= head then redis.call('HSET', nk, v .. NODE.RECEIVED, 0, v .. NODE.TAKEN, 0) end
  end
  open_add(gid, reopened)
  loop_event(gid, head, hi + 1, from, false)
  dispatch(gid, head, 1, hi + 1)
end

-- Loops that end are handled before loops that go round (an outer loop's reset wins).
local function ending_first(x, y) return (x[2] and 1 or 0) < (y[2] and 1 or 0) end

-- Fires joins until nothing changes: skips propagate, loops end or go round.
local function settle(gid, ready, loops)
  local nk = nkey(gid)
  while #ready > 0 or #loops > 0 do
    while #ready > 0 do
      local node = table.remove(ready)
      if type(node) == 'table' then
        local to = node[1]
        if node[3] == '1' then
          -- Outside every loop, the edge's target waits at iteration 1 for this edge alone.
          if node[2] then
            dispatch(gid, to, '1', '1')
          else
            skip(gid, to, NO_EDGE_TAKEN, ready, loops)
          end
        else
          local v = redis.call('HMGET', nk, to .. F_STATE, to .. F_ITER)
          if v[1] == S_PENDING then
            if node[2] then
              dispatch(gid, to, '1', v[2])
            else
              skip(gid, to, NO_EDGE_TAKEN, ready, loops)
            end
          end
        end
      else
        -- A join's counters are read once per call and written back by flush(), so a
        -- fan-in of many edges costs one read and one write, not three commands per edge.
        local k = gid .. '\0' .. node
        queued[k] = nil
        local c = jc[k]
        if c == nil then
          local v = redis.call('HMGET', nk, node .. F_STATE, node .. NODE.RECEIVED, node .. NODE.TAKEN, node .. F_ITER)
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
        if c[1] == NodeState.PENDING then
          local t = topo(gid, node)
          local r, tk, indegree = c[2], c[3], t[NODE_TOPOLOGY.IN_DEGREE]
          if tk > 0 and (t[NODE_TOPOLOGY.JOIN] == JoinMode.ANY or r >= indegree) then
            c[1] = NodeState.QUEUED
            dispatch(gid, node, 1, c[4])
          elseif r >= indegree then
            c[1] = NodeState.SKIPPED
            skip(gid, node, NO_EDGE_TAKEN, ready, loops)
          end
        end
      end
    end
    -- Only when some loop is due: most settles have none, and the sort, its comparator
    -- and a new table are ~2k instructions a node.
    if #loops > 0 then
      table.sort(loops, ending_first)
      local due = loops
      loops = {}
      for _, l in ipairs(due) do
        if l[2] then
          continue_loop(gid, l[1], loop_topo(gid, l[1])[LOOP_TOPOLOGY.SOURCE], ready)
        else
          finish_loop(gid, l[1], ready)
        end
      end
    end
  end
end
