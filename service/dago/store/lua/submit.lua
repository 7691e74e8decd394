-- Creates a graph run and dispatches its entry nodes, or returns the run an earlier
-- submission with the same request_id created.
-- ARGV: tag, gid, request_id, body_hash, name, def, inputs, ids(json), entries(json),
--       max_steps, max_tokens, max_cost, deadline_ms, retention_s, namespace, max_events,
--       then topology field/value pairs.
local gid, rid, hash, ns = ARGV[2], ARGV[3], ARGV[4], ARGV[15]
local gk = gkey(gid)
-- The client may run a script again when a reply is lost; a fresh graph id that already
-- exists can only be this very submission.
if redis.call('EXISTS', gk) == 1 then
  return {'created', gid, tonumber(redis.call('HGET', gk, 'state')) or 0}
end
if rid ~= '' then
  local rk = reqkey(ns, rid)
  local v = redis.call('HMGET', rk, 'g', 'h')
  if v[1] then
    if v[2] ~= hash then return {'conflict', v[1], 0} end
    return {'exists', v[1], tonumber(redis.call('HGET', gkey(v[1]), 'state')) or 0}
  end
  redis.call('HSET', rk, 'g', gid, 'h', hash)
end
local ids = cjson.decode(ARGV[8])
local entries = cjson.decode(ARGV[9])
redis.call('HSET', gk, 'state', G_SUBMITTED, 'name', ARGV[5], 'created', NOW, 'seq', 0,
  'steps', 0, 'open', #ids, 'def', ARGV[6], 'inputs', ARGV[7], 'ids', ARGV[8],
  'max_steps', ARGV[10], 'max_tokens', ARGV[11], 'max_cost', ARGV[12], 'retention', ARGV[14],
  'request_id', rid, 'ns', ns, 'max_events', ARGV[16])
-- Node and topology fields are written a few hundred per HSET, not one command per node.
local function hset_all(key, fv)
  for k = 1, #fv, 600 do
    redis.call('HSET', key, unpack(fv, k, math.min(k + 599, #fv)))
  end
end
local tk = gk .. ':t'
local fv = {}
for i = 17, #ARGV do fv[#fv + 1] = ARGV[i] end
hset_all(tk, fv)
local nk = nkey(gid)
fv = {}
for _, node in ipairs(ids) do
  local n = #fv
  fv[n + 1] = node .. ':s'; fv[n + 2] = PENDING
  fv[n + 3] = node .. ':a'; fv[n + 4] = 0
  fv[n + 5] = node .. ':i'; fv[n + 6] = 1
end
hset_all(nk, fv)
-- The node hash gets ~10 fields per node and every transition reads and writes it several
-- times. Redis keeps hashes of up to hash-max-listpack-entries (512 by default) fields as a
-- listpack, where each access scans the fields one by one: for a graph of more than a few
-- nodes that made each command cost several times its price. A value longer than
-- hash-max-listpack-value (64) turns the hash into a hash table for good (deleting it does
-- not turn it back), so every access is O(1).
-- The topology hash (read once per transition of each node) likewise.
if #ids > 4 then
  local long = string.rep('.', 65)
  for _, k in ipairs({nk, tk}) do
    redis.call('HSET', k, '~', long)
    redis.call('HDEL', k, '~')
  end
end
-- The submitter's W3C trace context arrives as the pseudo-topology field '~tp' (no node id
-- starts with '~'); it is kept with the graph so every attempt joins the submitter's trace.
local tp = redis.call('HGET', tk, '~tp')
if tp then
  redis.call('HSET', gk, 'tp', tp)
  redis.call('HDEL', tk, '~tp')
end
redis.call('HINCRBY', STATS, 'submitted', 1)
local idx = nsindex(ns)
redis.call('ZADD', idx, NOW, gid)
redis.call('ZADD', idx .. ':' .. G_SUBMITTED, NOW, gid)
emit(gid, 'graph_submitted', nil, nil, nil, jstr({name = ARGV[5], entries = entries}))
for _, node in ipairs(entries) do dispatch(gid, node, 1, 1) end
local deadline = tonumber(ARGV[13])
if deadline > 0 then redis.call('ZADD', TIMERS, NOW + deadline, 'd|' .. gid) end
flush()
return {'created', gid, G_SUBMITTED}
