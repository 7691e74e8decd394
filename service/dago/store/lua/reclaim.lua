-- Takes over work items whose consumer stopped renewing them (a dead or hung worker).
-- Items delivered more than max_deliveries times go to the dead-letter stream; their node
-- waits there (DEAD_LETTERED, the graph stays running) until an operator requeues or drops
-- it (deadletter.lua). Stale items (their node moved on) are only acked.
-- ARGV: tag, consumer, min_idle_ms, count, max_deliveries.
-- Returns {next_cursor, {msg_id, deliveries, field, value, ...}, ...}.
local consumer, idle, count, maxd = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local res = redis.call('XAUTOCLAIM', WORK, GROUP, consumer, idle, '0-0', 'COUNT', count)
local out = {res[1]}
for _, m in ipairs(res[2]) do
  local mid, fields = m[1], m[2]
  local pend = redis.call('XPENDING', WORK, GROUP, mid, mid, 1)
  local n = (pend[1] and tonumber(pend[1][4])) or 1
  local f = {}
  for k = 1, #fields, 2 do f[fields[k]] = fields[k + 1] end
  if n > maxd then
    redis.call('XACK', WORK, GROUP, mid)
    if fence(f.g, f.n, f.a, f.i, {QUEUED, RUNNING}) then
      local err = jstr({c = 6, m = 'the work item was delivered ' .. n .. ' times without finishing and was moved to the dead-letter list (requeue or drop it)', r = false})
      local nk = nkey(f.g)
      local did = redis.call('XADD', DEAD, 'MAXLEN', '~', 100000, '*', 'g', f.g, 'n', f.n,
        'a', f.a, 'i', f.i, 'id', mid, 'deliveries', n, 'ts', NOW, 'e', err)
      redis.call('HSET', nk, f.n .. ':s', DEAD_LETTERED, f.n .. ':err', err, f.n .. ':dl', did)
      redis.call('ZREM', TIMERS, timer_key('t', f.g, f.n, f.i, f.a))
      redis.call('HINCRBY', STATS, 'dead', 1)
      emit(f.g, 'node_dead_lettered', f.n, f.a, f.i,
        '{"e":' .. err .. ',"n":' .. n .. ',"id":' .. jstr(did) .. '}')
    end
  else
    local item = {mid, n}
    for k = 1, #fields do item[#item + 1] = fields[k] end
    out[#out + 1] = item
  end
end
if #out > 1 then redis.call('HINCRBY', STATS, 'reclaimed', #out - 1) end
flush()
return out
