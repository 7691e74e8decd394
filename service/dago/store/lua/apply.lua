-- Applies a batch of finished attempts of the shard (apply_batch) and, when `want` is not
-- 0, starts up to `want` new work items of the shard for the same worker in the same step
-- (start_batch): a worker finishing attempts gets its next ones without a read of its own,
-- one round trip per step of a chain.
-- Returns {per result the node's state it left (UNSPECIFIED: stale), items (as start_batch
-- returns them)}.
local A = ARG.APPLY
local worker, want = ARGV[A.WORKER], tonumber(ARGV[A.WANT])
local applied = apply_batch(worker, ARGV, A.FIRST)
local started = {}
if want > 0 then
  local items = read_new(worker, want)
  if #items > 0 then started = start_batch(worker, items, tonumber(ARGV[A.LEASE_MS])) end
end
flush()
return {applied, started}
