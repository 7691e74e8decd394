-- Applies a batch of results (complete_batch) and, in the same step, takes up to `want` new
-- work items of this shard for the same worker and marks them running (start_batch), so a
-- worker that finishes attempts gets its next ones without a read and a start of its own:
-- one round trip per step of a chain instead of three. What each item reads and its
-- timeout come from the topology's '<node' field; an item whose graph has none (stored by
-- an older version) is returned as read, for the worker to start the usual way.
-- ARGV: tag, worker_id, want, lease_ms, then per result 13 fields (complete_batch).
-- Returns {results, items}; per item {msg_id, gid, node, attempt, iter, status, inputs|false,
-- {node, output, ...}} with status run | stale | read.
local worker, want, lease = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local results = complete_batch(worker, ARGV, 5)
local items = {}
if want > 0 then
  local res = redis.call('XREADGROUP', 'GROUP', GROUP, worker, 'COUNT', want, 'STREAMS', WORK, '>')
  local A, pos = {}, {}
  for _, m in ipairs(res and res[1][2] or {}) do
    local f = {}
    for k = 1, #m[2], 2 do f[m[2][k]] = m[2][k + 1] end
    local item = {m[1], f.g, f.n, f.a, f.i, 'read', false, {}}
    items[#items + 1] = item
    local plan = redis.call('HGET', gkey(f.g) .. ':t', '<' .. f.n)
    if plan then
      local need, refs, timeout = string.match(plan, '^(%d)|([^|]*)|(%d+)$')
      local n = #A
      A[n + 1], A[n + 2], A[n + 3], A[n + 4], A[n + 5] = m[1], f.g, f.n, f.a, f.i
      A[n + 6], A[n + 7], A[n + 8], A[n + 9] = '1', need, refs, int(tonumber(timeout) + lease)
      pos[#pos + 1] = item
    end
  end
  if #A > 0 then
    for k, r in ipairs(start_batch(worker, A, 1)) do
      local item = pos[k]
      item[6], item[7], item[8] = r[1], r[2], r[3]
    end
  end
end
flush()
return {results, items}
