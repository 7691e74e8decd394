-- Stores the next version of a definition, unless its latest version has the same digest.
-- KEYS[1]: the namespace's definition names (DefinitionKeys.names), KEYS[2]: the
-- definition's hash (DefinitionKeys.definition). Returns {created | exists, version}, or
-- {names | versions, limit} when storing it would pass the namespace's quota of names or
-- the name's quota of versions (nothing is stored).
local A = ARG.PUBLISH
local dk = KEYS[2]
local n = tonumber(redis.call('HGET', dk, DEFINITION.COUNT)) or 0
if n > 0 and redis.call('HGET', dk, DEFINITION.DIGEST .. n) == ARGV[A.DIGEST] then
  return {'exists', n}
end
if n >= tonumber(ARGV[A.MAX_VERSIONS]) then return {'versions', ARGV[A.MAX_VERSIONS]} end
if n == 0 and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[A.MAX_NAMES]) then
  return {'names', ARGV[A.MAX_NAMES]}
end
n = n + 1
redis.call('HSET', dk, DEFINITION.COUNT, n, DEFINITION.RECORD .. n, ARGV[A.RECORD],
  DEFINITION.DIGEST .. n, ARGV[A.DIGEST], DEFINITION.CREATED .. n, NOW)
redis.call('ZADD', KEYS[1], 0, ARGV[A.NAME])
return {'created', n}
