"""One finished run as rows of the archive, written in one transaction, once.

The messages are stored in their proto JSON form (json_format), so a read parses back the
message that was written; the plain columns beside them are copied out of them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg
from google.protobuf import json_format, struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from psycopg.types.json import Jsonb

from dago.config import Settings
from dago.llm import models
from dago.llm.providers import default_provider
from dago.v1 import execution_pb2, graph_pb2, orchestrator_pb2


@dataclass(frozen=True)
class FinishedRun:
    """Everything the archive keeps of one finished run, as the API returns it."""

    graph_id: str
    namespace: str
    graph: graph_pb2.Graph
    inputs: struct_pb2.Struct
    status: execution_pb2.GraphStatus
    """The FULL view: every node with every attempt's input and output."""
    result: orchestrator_pb2.GetGraphResultResponse
    events: list[execution_pb2.Event]
    fork: dict[str, Any] | None = None
    """What a fork of the run is planned from once Redis let it go (``dago.api.fork.record``,
    ``dago_runs.fork_json``)."""


class RunSource(Protocol):
    """Reads a finished run completely from Redis (the API layer builds its messages)."""

    async def finished_run(self, shard: int, graph_id: str) -> FinishedRun | None:
        """The run, or None when Redis no longer holds it."""
        ...


def _time(ts: Timestamp) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if ts.seconds or ts.nanos else None


def _json(msg: Any) -> Jsonb:
    return Jsonb(json_format.MessageToDict(msg), dumps=_dumps)


def _dumps(doc: Any) -> str:
    text = json.dumps(doc, separators=(",", ":"))
    # PostgreSQL's jsonb and text hold no NUL character, which JSON (a tool's output, a
    # model's text) may: it is stored as U+FFFD, or the run could never be archived.
    if "\\u0000" in text:
        text = json.dumps(_without_nul(doc), separators=(",", ":"))
    return text


def _without_nul(doc: Any) -> Any:
    if isinstance(doc, str):
        return doc.replace("\x00", "\ufffd")
    if isinstance(doc, list):
        return [_without_nul(v) for v in doc]
    if isinstance(doc, dict):
        return {_without_nul(k): _without_nul(v) for k, v in doc.items()}
    return doc


def node_models(run: FinishedRun, settings: Settings) -> dict[str, str]:
    """The model each node called: the last one its usage events name. An LLM or agent node
    without one (it failed or was skipped first) gets the model it would have called, by
    the resolution of dago.llm.providers (its own, else the server's default for its
    provider); nodes that call no model get ''."""
    found: dict[str, str] = {}
    for ev in run.events:
        if ev.WhichOneof("payload") == "usage" and ev.usage.model:
            found[ev.node_id] = ev.usage.model
    out: dict[str, str] = {}
    for node in run.graph.nodes:
        kind = node.WhichOneof("kind")
        if node.id in found:
            out[node.id] = found[node.id]
        elif kind in ("llm", "agent"):
            spec = node.llm if kind == "llm" else node.agent.llm
            out[node.id] = _model(spec, settings)
        else:
            out[node.id] = ""
    return out


def _model(spec: graph_pb2.LlmNode, settings: Settings) -> str:
    provider = spec.provider or default_provider(settings)
    if provider == "offline":
        return "offline"
    default = models.DEFAULT_MODEL if provider == "anthropic" else ""
    return spec.model or settings.llm_model or default


_RUN = """
INSERT INTO dago_runs (
    graph_id, namespace, name, request_id, state, created_at, started_at, ended_at, metadata,
    input_tokens, output_tokens, cache_write_tokens, cache_read_tokens, cost_usd, steps,
    event_count, graph_json, inputs_json, status_json, result_json,
    definition_name, definition_version, definition_digest, parent_graph_id, parent_node_id,
    forked_from_graph_id, priority, reused_nodes, fork_json
) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,
    %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (graph_id) DO NOTHING
RETURNING graph_id
"""
_EVENT = """
INSERT INTO dago_run_events (graph_id, seq, kind, node_id, time, event_json)
VALUES (%s, %s, %s, %s, %s, %s)
"""
_USAGE = """
INSERT INTO dago_run_usage (
    graph_id, node_id, model, input_tokens, output_tokens, cache_write_tokens,
    cache_read_tokens, cost_usd
) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)
"""


async def write_run(
    conn: psycopg.AsyncConnection[Any], run: FinishedRun, settings: Settings
) -> bool:
    """Write ``run`` in one transaction; False when it was archived already (nothing
    written: the first copy stays)."""
    st, u = run.status, run.status.usage
    state = execution_pb2.GraphState.Name(st.state).removeprefix("GRAPH_STATE_")
    ended = _time(st.end_time) or datetime.now(UTC)
    row = (
        run.graph_id, run.namespace, _without_nul(st.name), st.request_id, state,
        _time(st.create_time), _time(st.start_time), ended,
        _json(run.graph.metadata), u.input_tokens, u.output_tokens,
        u.cache_creation_input_tokens, u.cache_read_input_tokens, u.cost_usd, st.steps,
        len(run.events), _json(run.graph), _json(run.inputs), _json(st), _json(run.result),
        st.definition.name or None, st.definition.version or None, st.definition.digest or None,
        st.parent_graph_id or None, st.parent_node_id or None,
        st.forked_from or None, st.priority or None, st.reused_nodes,
        None if run.fork is None else Jsonb(run.fork, dumps=_dumps),
    )  # fmt: skip
    async with conn.transaction(), conn.cursor() as cur:
        await cur.execute(_RUN, row)
        if await cur.fetchone() is None:
            return False
        await cur.executemany(_EVENT, [_event_row(run.graph_id, ev, ended) for ev in run.events])
        used = node_models(run, settings)
        await cur.executemany(
            _USAGE, [_usage_row(run.graph_id, n, used.get(n.node_id, "")) for n in st.nodes]
        )
    return True


def _event_row(graph_id: str, ev: execution_pb2.Event, ended: datetime) -> tuple[Any, ...]:
    kind = (ev.WhichOneof("payload") or "").upper()
    return (graph_id, ev.seq, kind, ev.node_id, _time(ev.time) or ended, _json(ev))


def _usage_row(graph_id: str, node: execution_pb2.NodeStatus, model: str) -> tuple[Any, ...]:
    u = node.usage
    return (
        graph_id, node.node_id, model, u.input_tokens, u.output_tokens,
        u.cache_creation_input_tokens, u.cache_read_input_tokens, u.cost_usd,
    )  # fmt: skip
