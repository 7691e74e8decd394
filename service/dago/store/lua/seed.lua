-- A fork's map seeds (MapItems.SEEDS), copied from its source run before the fork is
-- submitted: for each map named (ITEM.SEED_MAP), the index list of the source's completed
-- items, and each one's value and recorded output, which the fork's expand completes an
-- unchanged item with (Map.reuse). The source and the fork share the shard (ForkGraph
-- places a fork on its source's shard unless its request_id's record decides another), so a
-- map of 10,000 items is copied here and never travels through the API.
-- One HMGET per item of the source (~50 Redis calls' worth of instructions per 10 items;
-- a fork is rare next to a node's transitions); HSET in chunks, as unpack() of a long
-- table overflows Lua's C stack. The fork's item hash expires after ttl_s unless its run
-- takes the seeds over (its keys then expire with the run). Returns the items seeded.
local A, SM = ARG.SEED, ITEM.SEED_MAP
local src, gid, ttl = ARGV[A.SOURCE], ARGV[A.GRAPH_ID], ARGV[A.TTL_S]
local CHUNK = 1000
local seeded = 0
for i = A.FIRST, #ARGV, SM.SIZE do
  local map = ARGV[i + SM.NODE]
  local sep = map .. MAP_ITEMS.SEP
  local from, to = hkey(src, sep), hkey(gid, sep)
  local total = tonumber(redis.call('HGET', nkey(src), map .. MAP_ITEMS.TOTAL)) or 0
  local done, fields = {}, {}
  for k = 0, total - 1 do
    local item = sep .. int(k)
    local v = redis.call('HMGET', from, item .. F_STATE, item .. MAP_ITEMS.VALUE_REF .. NODE.OUTPUT,
      item .. NODE.OUTPUT)
    if v[1] == S_COMPLETED then
      done[#done + 1] = int(k)
      local n = #fields
      fields[n + 1], fields[n + 2] = item .. MAP_ITEMS.SEED_VALUE, v[2] or 'null'
      fields[n + 3], fields[n + 4] = item .. MAP_ITEMS.SEED_OUTPUT, v[3] or 'null'
      if n + 4 >= CHUNK then
        redis.call('HSET', to, unpack(fields))
        fields = {}
      end
    end
  end
  if #done > 0 then
    fields[#fields + 1], fields[#fields + 2] = sep .. MAP_ITEMS.SEEDS, table.concat(done, ',')
    redis.call('HSET', to, unpack(fields))
    redis.call('EXPIRE', to, ttl)
    seeded = seeded + #done
  end
end
return seeded
