-- dago run history, version 4: forks. A fork's link (forked_from_graph_id, reserved by
-- version 1), its priority and how many nodes it reused become columns listings filter and
-- show; fork_json keeps what ForkGraph plans a fork from, so a run can be forked once its
-- Redis state expired (docs/definitions.md, "Forking an archived run").

-- The run's priority (1-5); NULL for runs archived before this version that did not record
-- one (read as the default).
ALTER TABLE dago_runs ADD COLUMN priority smallint;
-- Nodes a fork reused from the run it was forked from (GraphStatus.reused_nodes).
ALTER TABLE dago_runs ADD COLUMN reused_nodes integer NOT NULL DEFAULT 0;
-- The node fields a fork's plan reads, as Redis held them (dago.api.fork, "ForkSource"):
-- {"nodes": {field: text}, "items": {map: {index: [value, output]}}}. NULL for runs
-- archived before this version: forking them from the history is refused.
ALTER TABLE dago_runs ADD COLUMN fork_json jsonb;

-- Runs archived before: the columns are filled from the status each row already holds.
UPDATE dago_runs SET
    priority = NULLIF(status_json->>'priority', '')::smallint,
    forked_from_graph_id = NULLIF(status_json->>'forkedFrom', ''),
    reused_nodes = (
        SELECT count(*) FROM jsonb_array_elements(status_json->'nodes') AS n
        WHERE (n->>'reused')::boolean
    );

CREATE INDEX dago_runs_forked_from ON dago_runs (forked_from_graph_id)
    WHERE forked_from_graph_id IS NOT NULL;
