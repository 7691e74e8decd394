-- Lets a run the archiver has written to PostgreSQL expire, as end_graph does for a run
-- not archived: from now, after its retention period. Only a run still in the shard's
-- archive queue is touched, so a repeat (a reply lost, another API replica that archived
-- it too) changes nothing. Returns 1 when it was queued, else 0.
local gid = ARGV[ARG.ARCHIVED.GRAPH_ID]
if redis.call('ZREM', K_ARCHIVE, gid) == 0 then return 0 end
expire_graph(gid)
return 1
