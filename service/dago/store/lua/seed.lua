-- A fork's map seeds (MapItems.SEEDS), copied from its source run before the fork is
-- submitted: for a range of a map's items (ITEM.SEED_MAP), the source's completed ones,
-- each one's value and recorded output, which the fork's expand completes an unchanged
-- item with (Map.reuse), and their indexes appended to the map's seed list. The source and
-- the fork share the shard (ForkGraph places a fork on its source's shard unless its
-- request_id's record decides another), so a map of 10,000 items is copied here and never
-- travels through the API. The API sends ranges of Store.SEED_RANGE items, one call each:
-- a long map does not hold Redis for one long call (~3-4 ms per 1,000 items measured by
-- bench/forkseed.py). Items are read and written BATCH at a time (one HMGET and one HSET:
-- a redis.call costs more than the fields it carries). The fork's item hash expires after
-- ttl_s unless its run takes the seeds over (its keys then expire with the run). Returns
-- the items seeded.
local A, SM = ARG.SEED, ITEM.SEED_MAP
local src, gid, ttl = ARGV[A.SOURCE], ARGV[A.GRAPH_ID], ARGV[A.TTL_S]
local BATCH = 500  -- items per HMGET (1,500 fields; unpack() of many more overflows Lua's C stack)
local VALUE, SVAL, SOUT = MAP_ITEMS.VALUE_REF .. NODE.OUTPUT, MAP_ITEMS.SEED_VALUE, MAP_ITEMS.SEED_OUTPUT
local seeded = 0
for i = A.FIRST, #ARGV, SM.SIZE do
  local map = ARGV[i + SM.NODE]
  local sep = map .. MAP_ITEMS.SEP
  local from, to = hkey(src, sep), hkey(gid, sep)
  local total = tonumber(redis.call('HGET', nkey(src), map .. MAP_ITEMS.TOTAL)) or 0
  local stop = math.min(tonumber(ARGV[i + SM.FIRST]) + tonumber(ARGV[i + SM.SPAN]), total) - 1
  local done = {}
  for first = tonumber(ARGV[i + SM.FIRST]), stop, BATCH do
    local last = math.min(first + BATCH - 1, stop)
    local names, n = {}, 0
    for k = first, last do
      local item = sep .. int(k)
      names[n + 1], names[n + 2], names[n + 3] = item .. F_STATE, item .. VALUE, item .. NODE.OUTPUT
      n = n + 3
    end
    local v = redis.call('HMGET', from, unpack(names))
    local fields, m = {}, 0
    for k = first, last do
      local at = (k - first) * 3
      if v[at + 1] == S_COMPLETED then
        local item = sep .. int(k)
        done[#done + 1] = int(k)
        fields[m + 1], fields[m + 2] = item .. SVAL, v[at + 2] or 'null'
        fields[m + 3], fields[m + 4] = item .. SOUT, v[at + 3] or 'null'
        m = m + 4
      end
    end
    if m > 0 then redis.call('HSET', to, unpack(fields)) end
  end
  if #done > 0 then
    local list = sep .. MAP_ITEMS.SEEDS
    local before = redis.call('HGET', to, list)
    local added = table.concat(done, ',')
    redis.call('HSET', to, list, before and (before .. ',' .. added) or added)
    redis.call('EXPIRE', to, ttl)
    seeded = seeded + #done
  end
end
return seeded
