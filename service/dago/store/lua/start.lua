-- Marks a batch of delivered work items as running (start_batch in transitions.lua).
-- ARGV: tag, worker_id, then per item 9 fields (see start_batch).
local out = start_batch(ARGV[2], ARGV, 3)
flush()
return out
