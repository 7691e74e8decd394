-- Map nodes (docs/semantics.md, "Map nodes"). A map node's first start evaluates its items
-- on a worker, which reports them with the `expand` function: the items are stored, the map
-- node is parked (RUNNING, holding no work item and no slot) and its first items are
-- dispatched. An item is an instance of the map's body node, stored as a node of its own
-- named '<map>#<index>' (schema.MapItems) in its map's item hash (hkey in core.lua: the
-- run's node hash does not grow with items), so its start, apply, retries, timeouts, reclaim
-- and dead letters are the fenced transitions of any node. Each item's end (Map.ended, from
-- apply_batch and attempt_failed) counts it and dispatches the next one in the same call,
-- so at most max_concurrency items are ever dispatched and not ended. When every item has
-- ended (or one failed the map), the summary is written (<map>:m:o) and the map node is
-- queued again: that start completes it through apply (output mapping, edge conditions).
-- One table, not more locals (a chunk may have 200).
local Map = {}

local M_SEP, M_RESULT = MAP_ITEMS.SEP, MAP_ITEMS.RESULT_REF
local M_TOTAL, M_NEXT, M_RUNNING = MAP_ITEMS.TOTAL, MAP_ITEMS.NEXT, MAP_ITEMS.RUNNING
local M_DONE, M_FAILED, M_CANCELLED = MAP_ITEMS.COMPLETED, MAP_ITEMS.FAILED, MAP_ITEMS.CANCELLED

-- Whether a node name is a map item's (no node id has the separator).
function Map.is_item(node)
  return names_of(node)[16] ~= false
end

-- The map node and index of an item's name.
function Map.split(item)
  local at = string.find(item, M_SEP, 1, true)
  return string.sub(item, 1, at - 1), string.sub(item, at + 1)
end

-- The topology name whose retry policy a node follows: an item follows its map's body
-- ('<map>#', dago.engine.topology), any other node its own.
function Map.topo_name(node)
  local at = string.find(node, M_SEP, 1, true)
  if at == nil then return node end
  return string.sub(node, 1, at)
end

-- {max_concurrency, on_failure, max_failures, body plan} of a map (MapItems.SPEC).
function Map.spec(raw)
  local c, p, f, plan = string.match(raw, '^(%d+)|(%d+)|(%d+)|(.*)$')
  return tonumber(c), tonumber(p), tonumber(f), plan
end

-- Dispatches up to `n` more items of the map, in index order, each as attempt 1 of the map's
-- iteration with its start plan (the body's, reading the item's value) and one more open
-- node in the graph's count. Returns how many it dispatched.
function Map.dispatch_next(gid, map, n)
  local nk = nkey(gid)
  local v = redis.call('HMGET', nk, map .. M_NEXT, map .. M_TOTAL, map .. MAP_ITEMS.SPEC, map .. F_ITER,
    map .. MAP_ITEMS.REUSED)
  local nxt, total = tonumber(v[1]) or 0, tonumber(v[2]) or 0
  local _, _, _, plan = Map.spec(v[3])
  local ik = v[5] and hkey(gid, map .. M_SEP)
  local k = 0
  local first = nxt
  while k < n and nxt < total do
    local item = map .. M_SEP .. int(nxt)
    if ik and redis.call('HGET', ik, item .. F_STATE) == S_COMPLETED then
      nxt = nxt + 1  -- a fork's reused item (Map.reuse) completed already: passed over
    else
      -- Every '@' of the body's plan is the item's name (its value ref, and its child's
      -- outcome for a body that runs a graph; node ids hold no '%').
      node_set(gid, item, item .. NODE.PLAN, (string.gsub(plan, '@', item)), item .. F_EXEC, '0')
      dispatch(gid, item, '1', v[4])
      nxt, k = nxt + 1, k + 1
    end
  end
  if k > 0 then
    open_add(gid, k)
    redis.call('HINCRBY', nk, map .. M_RUNNING, k)
  end
  if nxt ~= first then redis.call('HSET', nk, map .. M_NEXT, nxt) end
  return k
end

-- A fork's seeds (MapItems.SEEDS, written before the run was submitted): each item whose
-- value is the one it had in the source run completes now with its recorded output (not
-- dispatched, no usage: not executed, not charged); the others run. Returns how many.
function Map.reuse(gid, map, iter)
  redis.call('HDEL', nkey(gid), map .. MAP_ITEMS.REUSED)  -- an earlier iteration's
  local ik = hkey(gid, map .. M_SEP)
  local list = redis.call('HGET', ik, map .. M_SEP .. MAP_ITEMS.SEEDS)
  if not list then return 0 end
  local total = tonumber(redis.call('HGET', nkey(gid), map .. M_TOTAL)) or 0
  local n = 0
  for i in string.gmatch(list, '[^,]+') do
    local item = map .. M_SEP .. i
    local sv, so = item .. MAP_ITEMS.SEED_VALUE, item .. MAP_ITEMS.SEED_OUTPUT
    local s = redis.call('HMGET', ik, sv, so, item .. MAP_ITEMS.VALUE_REF .. NODE.OUTPUT)
    if tonumber(i) < total and s[1] and s[1] == s[3] then
      node_set(gid, item, item .. F_STATE, S_COMPLETED, item .. NODE.OUTPUT, s[2], item .. F_ITER, iter,
        item .. F_ATTEMPT, '0', item .. F_ENDED, NOW_S, item .. NODE.REUSED, 1)
      n = n + 1
    end
    redis.call('HDEL', ik, sv, so)
  end
  redis.call('HDEL', ik, map .. M_SEP .. MAP_ITEMS.SEEDS)
  if n > 0 then redis.call('HSET', nkey(gid), map .. M_DONE, n, map .. MAP_ITEMS.REUSED, n) end
  return n
end

-- A map_progress event (MapResult keys) unless one was appended less than
-- MapItems.PROGRESS_MS ago; `force`: always (the first and the last).
function Map.progress(gid, map, force)
  local nk = nkey(gid)
  local v = redis.call('HMGET', nk, map .. MAP_ITEMS.PROGRESS_AT, map .. M_TOTAL, map .. M_NEXT,
    map .. M_RUNNING, map .. M_DONE, map .. M_FAILED, map .. M_CANCELLED, map .. F_ATTEMPT, map .. F_ITER)
  if not force and NOW - (tonumber(v[1]) or 0) < MAP_ITEMS.PROGRESS_MS then return end
  redis.call('HSET', nk, map .. MAP_ITEMS.PROGRESS_AT, NOW_S)
  local total, nxt = tonumber(v[2]) or 0, tonumber(v[3]) or 0
  local d = '{"' .. MAP_RESULT.TOTAL .. '":' .. total .. ',"' .. MAP_RESULT.QUEUED .. '":' .. int(total - nxt)
    .. ',"' .. MAP_RESULT.RUNNING .. '":' .. (v[4] or 0) .. ',"' .. MAP_RESULT.COMPLETED .. '":' .. (v[5] or 0)
    .. ',"' .. MAP_RESULT.FAILED .. '":' .. (v[6] or 0) .. ',"' .. MAP_RESULT.CANCELLED .. '":' .. (v[7] or 0) .. '}'
  emit(gid, EventKind.MAP_PROGRESS, map, v[8], v[9], d)
end

-- Ends every item of the map still open (dispatched and not ended: queued, running,
-- retrying, dead-lettered) as CANCELLED, tells the workers running them to stop, and counts
-- the items never dispatched as cancelled too: nothing more of the map runs.
function Map.stop(gid, map)
  local nk = nkey(gid)
  local v = redis.call('HMGET', nk, map .. M_NEXT, map .. M_TOTAL, map .. F_ITER)
  local nxt, total, iter = tonumber(v[1]) or 0, tonumber(v[2]) or 0, v[3]
  local cancelled = total - nxt
  local ik = hkey(gid, map .. M_SEP)
  for k = 0, nxt - 1, 500 do
    local fields = {}
    for i = k, math.min(k + 499, nxt - 1) do
      local item = map .. M_SEP .. int(i)
      fields[#fields + 1] = item .. F_STATE
      fields[#fields + 1] = item .. F_ATTEMPT
      fields[#fields + 1] = item .. F_EXEC
    end
    local s = redis.call('HMGET', ik, unpack(fields))
    for j = 0, #fields / 3 - 1 do
      local st = s[3 * j + 1]
      if st == S_QUEUED or st == S_RUNNING or st == NodeStateText.RETRYING
        or st == NodeStateText.DEAD_LETTERED or st == NodeStateText.WAITING then
        local item = map .. M_SEP .. int(k + j)
        node_set(gid, item, item .. F_STATE, NodeStateText.CANCELLED, item .. F_ENDED, NOW_S)
        -- An item whose child run runs (a graph body): the child is cancelled with it.
        if st == NodeStateText.WAITING then Child.cancel(gid, item) end
        if st == S_RUNNING then stop_work(gid, item, s[3 * j + 2], s[3 * j + 3]) end
        if st == NodeStateText.RETRYING then
          redis.call('ZREM', K_TIMERS, timer_key(TIMER.RETRY, gid, item, iter, int(tonumber(s[3 * j + 2]) + 1)))
        end
        open_add(gid, -1)
        cancelled = cancelled + 1
      end
    end
  end
  -- A fork's reused items past `nxt` completed already: not cancelled.
  if redis.call('HEXISTS', nk, map .. MAP_ITEMS.REUSED) == 1 then
    for i = nxt, total - 1 do
      local item = map .. M_SEP .. int(i)
      if redis.call('HGET', ik, item .. F_STATE) == S_COMPLETED then cancelled = cancelled - 1 end
    end
  end
  redis.call('HSET', nk, map .. M_NEXT, total, map .. M_RUNNING, 0, map .. M_CANCELLED, cancelled)
end

-- Every item has ended, or item `fidx` failed the map (its error `err`): writes the summary
-- (MapResult keys: the items' outputs in order, null for those that did not complete, and
-- the counts; or the failed item) read by the map's next start, ends the map's parked
-- execution, and queues the map node again as its next execution (as a decided wait).
function Map.finish(gid, map, fidx, err)
  local nk = nkey(gid)
  local v = redis.call('HMGET', nk, map .. M_TOTAL, map .. M_DONE, map .. M_FAILED, map .. M_CANCELLED,
    map .. F_ITER, map .. F_ATTEMPT, map .. F_EXEC, map .. F_STARTED, map .. F_WORKER)
  local total = tonumber(v[1]) or 0
  local rec = '{"' .. MAP_RESULT.ITERATION .. '":' .. v[5] .. ',"' .. MAP_RESULT.TOTAL .. '":' .. total
    .. ',"' .. MAP_RESULT.COMPLETED .. '":' .. (v[2] or 0) .. ',"' .. MAP_RESULT.FAILED .. '":' .. (v[3] or 0)
    .. ',"' .. MAP_RESULT.CANCELLED .. '":' .. (v[4] or 0)
  if fidx then
    rec = rec .. ',"' .. MAP_RESULT.FAILED_INDEX .. '":' .. fidx .. ',"' .. MAP_RESULT.ERROR .. '":' .. err .. '}'
  else
    local parts = {}
    local ik = hkey(gid, map .. M_SEP)
    for k = 0, total - 1, 500 do
      local fields = {}
      for i = k, math.min(k + 499, total - 1) do
        local item = map .. M_SEP .. int(i)
        fields[#fields + 1] = item .. F_STATE
        fields[#fields + 1] = item .. NODE.OUTPUT
      end
      local s = redis.call('HMGET', ik, unpack(fields))
      for j = 0, #fields / 2 - 1 do
        parts[#parts + 1] = (s[2 * j + 1] == S_COMPLETED and s[2 * j + 2]) or 'null'
      end
    end
    rec = rec .. ',"' .. MAP_RESULT.ITEMS .. '":[' .. table.concat(parts, ',') .. ']}'
  end
  bytes_fit(gid, #rec)
  local attempt, iter, last = v[6], v[5], tonumber(v[7]) or 0
  node_set(gid, map, map .. M_RESULT .. NODE.OUTPUT, rec,
    record_key(map, iter, attempt, int(last)), short_record(v[8] or NOW_S, NOW_S, S_COMPLETED, v[9]))
  Map.progress(gid, map, true)
  dispatch(gid, map, attempt, iter)
  node_set(gid, map, map .. F_EXEC, -math.abs(last))
end

-- An item ended for good (its state is written): COMPLETED (`ok`) or FAILED with `err`.
-- Counts it; a failure that fails the map (FAIL_FAST, or past COLLECT's max_failures) stops
-- the other items and finishes the map; else the next item is dispatched in its place, and
-- the map finishes when its last item ended.
function Map.ended(gid, item, ok, err)
  local map, idx = Map.split(item)
  local nk = nkey(gid)
  redis.call('HINCRBY', nk, map .. M_RUNNING, -1)
  redis.call('HINCRBY', nk, map .. (ok and M_DONE or M_FAILED), 1)
  local v = redis.call('HMGET', nk, map .. MAP_ITEMS.SPEC, map .. M_TOTAL, map .. M_DONE, map .. M_FAILED,
    map .. M_CANCELLED)
  local _, policy, maxf = Map.spec(v[1])
  local total, done, failed = tonumber(v[2]), tonumber(v[3]), tonumber(v[4])
  if not ok and (policy ~= MapFailurePolicy.COLLECT or failed > maxf) then
    Map.stop(gid, map)
    Map.finish(gid, map, idx, err)
    return
  end
  Map.dispatch_next(gid, map, 1)
  if done + failed + (tonumber(v[5]) or 0) >= total then
    Map.finish(gid, map, nil, nil)
  else
    Map.progress(gid, map, false)
  end
end

-- Adds an item's usage to its map node's counters too (the graph's are added by add_usage).
function Map.usage(gid, item, fields, u)
  local map = Map.split(item)
  local nk = nkey(gid)
  for k = 1, 4 do redis.call('HINCRBY', nk, map .. ':' .. fields[k], u[k]) end
  redis.call('HINCRBYFLOAT', nk, map .. ':' .. USAGE.COST, u[5])
end
