-- dago run history, version 3: an operator lists every namespace's runs
-- (ListGraphsRequest.namespace empty), newest first; this index serves that order the way
-- dago_runs_ns_created serves one namespace's.

CREATE INDEX dago_runs_created ON dago_runs (created_at DESC, graph_id DESC);
