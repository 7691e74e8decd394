-- Appends events a running attempt produced (LLM deltas, tool calls), fenced on the attempt.
-- ARGV: tag, gid, node, attempt, iter, then type/detail pairs. Returns 1, or 0 when the
-- attempt is no longer current (the caller should stop).
local gid, node, attempt, iter = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if fence(gid, node, attempt, iter, {RUNNING}) == nil then return 0 end
for i = 6, #ARGV, 2 do emit(gid, ARGV[i], node, attempt, iter, ARGV[i + 1]) end
flush()
return 1
