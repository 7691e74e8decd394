-- dago run history, version 1: one row per finished run, its event log, and its usage per
-- node and model. Applied by `dago migrate` (service/dago/history/migrate.py), which records
-- each applied file in dago_schema_migrations; files are never edited once released.
--
-- The *_json columns hold the dago.v1 messages in their proto JSON form (json_format,
-- field names in lowerCamelCase, as REST returns them): reads parse them back exactly, and
-- SQL can reach into them. The plain columns beside them are what listings and analytics
-- filter, sort and sum on.

CREATE TABLE dago_runs (
    graph_id             text PRIMARY KEY,
    namespace            text        NOT NULL,
    name                 text        NOT NULL DEFAULT '',
    request_id           text        NOT NULL DEFAULT '',
    -- GraphState name without its prefix: COMPLETED, FAILED or CANCELLED.
    state                text        NOT NULL,
    created_at           timestamptz NOT NULL,
    started_at           timestamptz,
    ended_at             timestamptz NOT NULL,
    -- The graph's client metadata (Graph.metadata), for key/value filters.
    metadata             jsonb       NOT NULL DEFAULT '{}',
    -- Links that later features fill (stored definitions, sub-graphs, forks); NULL until then.
    definition_name      text,
    definition_version   integer,
    parent_graph_id      text,
    parent_node_id       text,
    forked_from_graph_id text,
    forked_from_node_id  text,
    -- Usage summed over the run (GraphStatus.usage).
    input_tokens         bigint           NOT NULL DEFAULT 0,
    output_tokens        bigint           NOT NULL DEFAULT 0,
    cache_write_tokens   bigint           NOT NULL DEFAULT 0,
    cache_read_tokens    bigint           NOT NULL DEFAULT 0,
    cost_usd             double precision NOT NULL DEFAULT 0,
    steps                integer          NOT NULL DEFAULT 0,
    event_count          bigint           NOT NULL DEFAULT 0,
    -- dago.v1.Graph as submitted, the inputs (Struct), the final GraphStatus (FULL view:
    -- every node with its attempts) and GetGraphResultResponse.
    graph_json           jsonb NOT NULL,
    inputs_json          jsonb NOT NULL DEFAULT '{}',
    status_json          jsonb NOT NULL,
    result_json          jsonb NOT NULL,
    archived_at          timestamptz NOT NULL DEFAULT now()
);

-- Listings: newest first within a namespace, keyset-paged on (created_at, graph_id).
CREATE INDEX dago_runs_ns_created ON dago_runs (namespace, created_at DESC, graph_id DESC);
CREATE INDEX dago_runs_ns_state_created ON dago_runs (namespace, state, created_at DESC, graph_id DESC);
CREATE INDEX dago_runs_ns_name_created ON dago_runs (namespace, name, created_at DESC, graph_id DESC);
CREATE INDEX dago_runs_metadata ON dago_runs USING gin (metadata jsonb_path_ops);
CREATE INDEX dago_runs_definition ON dago_runs (definition_name, definition_version)
    WHERE definition_name IS NOT NULL;
CREATE INDEX dago_runs_parent ON dago_runs (parent_graph_id) WHERE parent_graph_id IS NOT NULL;
CREATE INDEX dago_runs_ended ON dago_runs (ended_at);

-- The run's event log, every entry, in order (seq from 1, no gaps).
CREATE TABLE dago_run_events (
    graph_id   text        NOT NULL REFERENCES dago_runs (graph_id) ON DELETE CASCADE,
    seq        bigint      NOT NULL,
    -- Event.kind's name without its prefix, e.g. NODE_COMPLETED.
    kind       text        NOT NULL,
    node_id    text        NOT NULL DEFAULT '',
    time       timestamptz NOT NULL,
    -- dago.v1.Event in proto JSON.
    event_json jsonb       NOT NULL,
    PRIMARY KEY (graph_id, seq)
);

-- Usage per node of a run, with the model the node called ('' for nodes without one):
-- what analytics group by model.
CREATE TABLE dago_run_usage (
    graph_id           text             NOT NULL REFERENCES dago_runs (graph_id) ON DELETE CASCADE,
    node_id            text             NOT NULL,
    model              text             NOT NULL DEFAULT '',
    input_tokens       bigint           NOT NULL DEFAULT 0,
    output_tokens      bigint           NOT NULL DEFAULT 0,
    cache_write_tokens bigint           NOT NULL DEFAULT 0,
    cache_read_tokens  bigint           NOT NULL DEFAULT 0,
    cost_usd           double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (graph_id, node_id)
);
CREATE INDEX dago_run_usage_model ON dago_run_usage (model);
