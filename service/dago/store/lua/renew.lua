-- Renews the leases of work items a worker still runs (resets their idle time), and puts
-- the deadline of each of those attempts (start.lua keeps it in the node's ':dl') on the
-- shard's timers: an attempt that outlives a renewal gets the Redis-held backstop against a
-- hung worker (sweep.lua fails it when due), while the many attempts that finish before
-- their first renewal never touch the timers. complete.lua removes a timer set here.
-- ARGV: tag, consumer, then per item 5 fields: msg_id, gid, node, iter, attempt.
-- Returns the number of timers set.
local consumer = ARGV[2]
local ids = {}
for i = 3, #ARGV, 5 do ids[#ids + 1] = ARGV[i] end
for k = 1, #ids, 1000 do
  redis.call('XCLAIM', WORK, GROUP, consumer, 0, unpack(ids, k, math.min(k + 999, #ids)), 'JUSTID')
end
local set = 0
for i = 3, #ARGV, 5 do
  local gid, node, iter, attempt = ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local tm = timer_key('t', gid, node, iter, attempt)
  local nk = nkey(gid)
  local v = redis.call('HMGET', nk, node .. ':s', node .. ':a', node .. ':i', node .. ':dl', node .. ':tm')
  if tonumber(v[1]) == RUNNING and tonumber(v[2]) == tonumber(attempt)
      and tonumber(v[3]) == tonumber(iter) and v[4] and v[5] ~= tm then
    redis.call('ZADD', TIMERS, v[4], tm)
    redis.call('HSET', nk, node .. ':tm', tm)
    set = set + 1
  end
end
return set
