-- Fair dispatch between namespaces (the table `Fair`, declared in core.lua so dispatch can
-- call it). A dispatched work item does not go to the shard's work stream straight away: it
-- waits in its namespace's queue of its run's priority (ShardKeys.queue, a list of packed
-- items: the time it was queued, graph, node, attempt, iteration), and the namespace is in
-- the shard's ready set (ShardKeys.ready) by its pass. A take (read_new) moves items to the
-- work stream in fair turns, then reads them with XREADGROUP as before: from there on the
-- work stream is the one it always was (pending entries, leases, reclaim, dead letters, acks).
--
-- Turns are stride scheduling, weighted round robin without a deficit to keep: the
-- namespace with the lowest pass is served, and each item it starts adds 1/weight to its
-- pass; a namespace with nothing queued leaves the set, and joins again at the shard's
-- virtual time (the pass served last), so idling earns no credit. Within a namespace, the
-- highest priority queue goes first. A namespace at its running cap (Fair.MAX_RUNNING of the
-- shares hash, its cap divided over the shards by the Python side) is passed over: its
-- items wait in its queue, holding no slot, until an ack of one of its items frees one.

-- Per call: each graph's {namespace, priority}, the namespaces put in the ready set, the
-- shard's shares (weights and caps), the items queued by this call not yet written (by
-- queue key: one RPUSH per queue and call instead of one per item).
local FAIR_G, FAIR_IN, FAIR_SHARES, FAIR_PUSH = {}, {}, {}, {}

function Fair.reset()
  if next(FAIR_G) ~= nil then FAIR_G = {} end
  if next(FAIR_IN) ~= nil then FAIR_IN = {} end
  if next(FAIR_SHARES) ~= nil then FAIR_SHARES = {} end
  if next(FAIR_PUSH) ~= nil then FAIR_PUSH = {} end
end

local function qkey(ns, prio) return TAG .. ':q:' .. ns .. ':' .. prio end

-- A graph's {namespace, priority, queue key, key in FAIR_IN}, read and made once per call
-- (Fair.push would otherwise join both keys per item).
local function fair_g(gid)
  local f = FAIR_G[gid]
  if f == nil then
    local v = redis.call('HMGET', gkey(gid), META.NAMESPACE, META.PRIORITY)
    local ns = v[1]
    if not ns or ns == '' then ns = 'default' end
    local prio = v[2] or int(FAIR.PRIORITY_DEFAULT)
    f = {ns, prio, qkey(ns, prio), TAG .. '\0' .. ns}
    FAIR_G[gid] = f
  end
  return f
end

local function fair_of(gid)
  local f = fair_g(gid)
  return f[1], f[2]
end

local SEP = FAIR.QUEUED_SEP
-- A queued item's graph, node, attempt and iteration (also read by work_item in
-- attempts.lua: the work stream holds the item as queued, WORK.PACKED).
local QUEUED = '^%d+' .. SEP .. '([^' .. SEP .. ']*)' .. SEP .. '([^' .. SEP .. ']*)' .. SEP
  .. '([^' .. SEP .. ']*)' .. SEP .. '(.*)$'

-- Queues a work item (an attempt of a node of graph `gid`), with the time it was queued
-- (ms: the age the metrics report as the queue's lag), packed (FAIR.QUEUED_SEP); written by
-- Fair.flush.
function Fair.push(gid, node, attempt, iter)
  local f = fair_g(gid)
  local ns, q = f[1], f[3]
  local buf = FAIR_PUSH[q]
  if buf == nil then buf = {}; FAIR_PUSH[q] = buf end
  buf[#buf + 1] = NOW_S .. SEP .. gid .. SEP .. node .. SEP .. attempt .. SEP .. iter
  local k = f[4]
  if not FAIR_IN[k] then
    local vt = redis.call('HGET', TAG .. ':fair', FAIR.CLOCK) or '0'
    redis.call('ZADD', TAG .. ':ready', 'NX', vt, ns)
    FAIR_IN[k] = true
  end
end

-- Writes the items queued by this call (flush, and a take before it moves any).
function Fair.flush()
  if next(FAIR_PUSH) == nil then return end
  for q, buf in pairs(FAIR_PUSH) do
    for k = 1, #buf, 1000 do
      redis.call('RPUSH', q, unpack(buf, k, math.min(k + 999, #buf)))
    end
  end
  FAIR_PUSH = {}
end

-- The shard's {weights, caps} by namespace ('' is the default's), read once per call.
local function shares()
  local s = FAIR_SHARES[TAG]
  if s == nil then
    s = {{}, {}}
    local raw = redis.call('HGETALL', TAG .. ':shares')
    local wl, ml = #FAIR.WEIGHT, #FAIR.MAX_RUNNING
    for k = 1, #raw, 2 do
      local f, v = raw[k], tonumber(raw[k + 1])
      if string.sub(f, 1, wl) == FAIR.WEIGHT then s[1][string.sub(f, wl + 1)] = v
      elseif string.sub(f, 1, ml) == FAIR.MAX_RUNNING then s[2][string.sub(f, ml + 1)] = v end
    end
    FAIR_SHARES[TAG] = s
  end
  return s
end

local function share(t, ns, default)
  local v = t[ns]
  if v == nil then v = t[''] end
  if v == nil then v = default end
  return v
end

-- Moves up to `count` queued items to the work stream in fair turns; returns how many.
local W_PACKED = WORK.PACKED

local function fair_move(count)
  Fair.flush()
  local ready = redis.call('ZRANGE', TAG .. ':ready', 0, -1, 'WITHSCORES')
  if #ready == 0 then return 0 end
  local s = shares()
  local fk = TAG .. ':fair'
  -- Candidates {ns, pass, running, cap, weight}.
  local cands = {}
  for k = 1, #ready, 2 do
    local ns = ready[k]
    local cap = share(s[2], ns, 0)
    cands[#cands + 1] = {ns, tonumber(ready[k + 1]), 0, cap, math.max(share(s[1], ns, 1), 0.001)}
  end
  if #cands > 1 or cands[1][4] > 0 then
    local fields = {}
    for _, c in ipairs(cands) do fields[#fields + 1] = FAIR.RUNNING .. c[1] end
    local run = redis.call('HMGET', fk, unpack(fields))
    for j, c in ipairs(cands) do c[3] = tonumber(run[j]) or 0 end
  end
  local moved, last_pass = 0, nil
  local inflight = {}
  -- {U, its untracked items before this call, added by it} (see Fair.done), read once.
  local untr = nil
  while moved < count and #cands > 0 do
    -- The lowest pass first (ties: the order of the set); the next lowest bounds its turn.
    local bi, second = 1, math.huge
    for j = 2, #cands do
      if cands[j][2] < cands[bi][2] then second = math.min(second, cands[bi][2]); bi = j
      else second = math.min(second, cands[j][2]) end
    end
    local c = cands[bi]
    local ns, step = c[1], 1 / c[5]
    local n = count - moved
    if c[4] > 0 then n = math.min(n, c[4] - c[3]) end
    if second < math.huge then n = math.min(n, math.floor((second - c[2]) / step) + 1) end
    local got, mids = 0, {}
    if n > 0 then
      for p = FAIR.PRIORITY_MAX, FAIR.PRIORITY_MIN, -1 do
        if got >= n then break end
        local vals = redis.call('LPOP', qkey(ns, p), n - got)
        if vals then
          for j = 1, #vals do
            mids[#mids + 1] = redis.call('XADD', K_WORK, '*', W_PACKED, vals[j])
          end
          got = got + #vals
        end
      end
    end
    if got > 0 then
      c[2] = c[2] + got * step
      c[3] = c[3] + got
      last_pass = c[2]
      redis.call('HINCRBY', fk, FAIR.RUNNING .. ns, got)
      moved = moved + got
      if untr == nil then
        local u = redis.call('HMGET', fk, FAIR.UNTRACKED_NS, FAIR.UNTRACKED)
        untr = {u[1] or '', tonumber(u[2]) or 0, 0}
      end
      if untr[2] + untr[3] == 0 then untr[1] = ns end
      if ns == untr[1] then
        untr[3] = untr[3] + got
      else
        for _, mid in ipairs(mids) do inflight[#inflight + 1] = mid; inflight[#inflight + 1] = ns end
      end
    end
    if n > 0 and got < n then
      -- Its queues are empty: out of the set until a dispatch brings it back.
      redis.call('ZREM', TAG .. ':ready', ns)
      FAIR_IN[TAG .. '\0' .. ns] = nil
      table.remove(cands, bi)
    elseif n <= 0 then
      table.remove(cands, bi)  -- at its cap: passed over, it keeps its place and its pass
    else
      redis.call('ZADD', TAG .. ':ready', 'XX', c[2], ns)
    end
  end
  if last_pass then redis.call('HSET', fk, FAIR.CLOCK, last_pass) end
  if untr and untr[3] > 0 then
    redis.call('HSET', fk, FAIR.UNTRACKED_NS, untr[1], FAIR.UNTRACKED, untr[2] + untr[3])
  end
  for k = 1, #inflight, 1000 do
    redis.call('HSET', TAG .. ':inflight', unpack(inflight, k, math.min(k + 999, #inflight)))
  end
  return moved
end

-- New work items of the current shard for `worker`, at most `count`, as XREADGROUP returns
-- them ({{id, fields}...}): fair turns first, then the read.
function Fair.take(worker, count)
  fair_move(count)
  local res = redis.call('XREADGROUP', 'GROUP', GROUP, worker, 'COUNT', count, 'STREAMS', K_WORK, '>')
  return res and res[1][2] or {}
end

-- Work entries acked (ids; `acked`: how many of them were pending, what XACK answered):
-- one less running item of their namespaces. An ack that frees a slot of a namespace at
-- its cap with items queued wakes the readers waiting for work.
-- Which namespace an entry is of: the inflight hash maps the entry to it, except for the
-- items of one namespace at a time (FAIR.UNTRACKED_NS, the first to start items while none
-- was untracked), which are only counted (FAIR.UNTRACKED): the acked entries not in the
-- hash are those. So with one namespace at work (or one dominant) nothing is written or
-- read per item; the count stays exact, as every entry in the stream came from a take, and
-- an entry acked twice (a late worker's apply after a reclaim) is not in XACK's answer.
function Fair.done(ids, acked)
  if #ids == 0 or acked == 0 then return end
  local ik, fk = TAG .. ':inflight', TAG .. ':fair'
  local per = {}
  local tracked = 0
  if redis.call('HLEN', ik) > 0 then
    for k = 1, #ids, 1000 do
      local part = {unpack(ids, k, math.min(k + 999, #ids))}
      local v = redis.call('HMGET', ik, unpack(part))
      local found = {}
      for j = 1, #part do
        if v[j] then per[v[j]] = (per[v[j]] or 0) + 1; found[#found + 1] = part[j] end
      end
      if #found > 0 then redis.call('HDEL', ik, unpack(found)) end
      tracked = tracked + #found
    end
  end
  if acked > tracked then
    local u = redis.call('HMGET', fk, FAIR.UNTRACKED_NS, FAIR.UNTRACKED)
    local left = tonumber(u[2]) or 0
    local n = math.min(acked - tracked, left)
    if u[1] and n > 0 then
      per[u[1]] = (per[u[1]] or 0) + n
      redis.call('HSET', fk, FAIR.UNTRACKED, left - n)
    end
  end
  local s = nil
  for ns, n in pairs(per) do
    local left = redis.call('HINCRBY', fk, FAIR.RUNNING .. ns, -n)
    if left <= 0 then redis.call('HDEL', fk, FAIR.RUNNING .. ns) end
    s = s or shares()
    local cap = share(s[2], ns, 0)
    if cap > 0 and left + n >= cap and redis.call('ZSCORE', TAG .. ':ready', ns) then
      dispatched = dispatched + 1
    end
  end
end

-- Charges an attempt's cost (USD, as text) to its namespace's spend of the day.
function Fair.spend(gid, cost)
  if cost == '0' or not tonumber(cost) or tonumber(cost) <= 0 then return end
  local ns = fair_of(gid)
  local day = math.floor(NOW / 86400000)
  local k = TAG .. ':spend:' .. int(day)
  redis.call('HINCRBYFLOAT', k, ns, cost)
  redis.call('EXPIREAT', k, (day + 3) * 86400)
end
