-- Removes the consumers of the shard's work group that hold no pending item, were idle past
-- min_idle_ms and are not named (ITEM.CONSUMER: the workers alive): each worker that
-- stopped under a name not used again left one behind.
-- The check and the removal are one step, so no item a consumer takes meanwhile is lost
-- (a consumer removed is made again by its next read). Returns how many were removed.
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', K_WORK, GROUP)
if not ok then return 0 end
local A, C = ARG.PRUNE, ITEM.CONSUMER
local min_idle = tonumber(ARGV[A.MIN_IDLE_MS])
local keep = {}
for i = A.FIRST, #ARGV, C.SIZE do keep[ARGV[i + C.NAME]] = true end
local n = 0
for _, c in ipairs(consumers) do
  local f = {}
  for k = 1, #c, 2 do f[c[k]] = c[k + 1] end
  if tonumber(f.pending) == 0 and tonumber(f.idle) > min_idle and not keep[f.name] then
    redis.call('XGROUP', 'DELCONSUMER', K_WORK, GROUP, f.name)
    n = n + 1
  end
end
return n
