-- Starts up to `want` new work items of the call's shards (KEYS, in the order given: the
-- caller rotates it, so every shard has its turn) for one worker, in one step: reads them
-- (XREADGROUP, never blocking) and marks them running (start_batch). A worker so never
-- holds more items than it asked for, whatever the number of shards. When fewer than
-- wanted were found, every shard was read to its end: the caller waits for new work with
-- XREAD on the shards' wake streams from the cursors returned (their last entry ids), which
-- any call that leaves work behind appends to (see flush in core.lua).
-- Returns {{shard position, items}..., cursors}; items as start_batch returns them.
local A = ARG.TAKE
local worker, want, lease = ARGV[A.WORKER], tonumber(ARGV[A.WANT]), tonumber(ARGV[A.LEASE_MS])
local groups, cursors = {}, {}
for i = 1, #KEYS do
  if want <= 0 then break end
  if i > 1 then use_shard(i) end
  local items = read_new(worker, want)
  want = want - #items
  if #items > 0 then
    local started = start_batch(worker, items, lease)
    if #started > 0 then groups[#groups + 1] = {i, started} end
    flush()
  end
  if want > 0 then
    local last = redis.call('XREVRANGE', K_WAKE, '+', '-', 'COUNT', 1)
    cursors[i] = last[1] and last[1][1] or '0-0'
  end
end
return {groups, cursors}
