-- dago run history, version 3: a child run (a subgraph node's run) records the run and
-- node that started it; ListGraphs' parent filter reads dago_runs_parent.

ALTER TABLE dago_runs ADD COLUMN parent_graph_id text;
ALTER TABLE dago_runs ADD COLUMN parent_node_id text;
CREATE INDEX dago_runs_parent ON dago_runs (parent_graph_id, created_at DESC)
    WHERE parent_graph_id IS NOT NULL;
