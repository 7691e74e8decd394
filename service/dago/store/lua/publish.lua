-- Stores the next version of a definition, unless its latest version has the same digest.
-- KEYS[1]: the namespace's definition names (DefinitionKeys.names), KEYS[2]: the
-- definition's hash (DefinitionKeys.definition). Returns {created | exists, version}.
local A = ARG.PUBLISH
local dk = KEYS[2]
local n = tonumber(redis.call('HGET', dk, DEFINITION.COUNT)) or 0
if n > 0 and redis.call('HGET', dk, DEFINITION.DIGEST .. n) == ARGV[A.DIGEST] then
  return {'exists', n}
end
n = n + 1
redis.call('HSET', dk, DEFINITION.COUNT, n, DEFINITION.RECORD .. n, ARGV[A.RECORD],
  DEFINITION.DIGEST .. n, ARGV[A.DIGEST], DEFINITION.CREATED .. n, NOW)
redis.call('ZADD', KEYS[1], 0, ARGV[A.NAME])
return {'created', n}
