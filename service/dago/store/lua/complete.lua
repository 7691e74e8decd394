-- Applies the results of a batch of node attempts (complete_batch in transitions.lua).
-- ARGV: tag, worker_id, then per item 13 fields (see complete_batch).
local out = complete_batch(ARGV[2], ARGV, 3)
flush()
return out
