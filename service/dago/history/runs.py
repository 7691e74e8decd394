"""One archived run read back from PostgreSQL, as the messages it was archived as.

Each read returns the run's namespace with the message: the API checks it exactly as for a
run in Redis (another namespace's run is NOT_FOUND)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from dago.history.db import HistoryDb
from dago.v1 import execution_pb2, graph_pb2, orchestrator_pb2


@dataclass(frozen=True)
class Archived:
    """What one read found: the run's namespace and the message asked for."""

    namespace: str
    message: Any


@dataclass(frozen=True)
class ForkRecord:
    """An archived run as ForkGraph reads it."""

    state: execution_pb2.GraphState.ValueType
    graph: graph_pb2.Graph
    inputs: dict[str, Any]
    fork: dict[str, Any] | None
    """``dago_runs.fork_json`` (``dago.api.fork.record``); None for a run archived before
    the history kept it."""


def basic(status: execution_pb2.GraphStatus) -> execution_pb2.GraphStatus:
    """``status`` in GRAPH_STATUS_VIEW_BASIC: no node outputs, no attempt inputs or outputs
    (what dago.api.views leaves out of a run in Redis)."""
    out = execution_pb2.GraphStatus()
    out.CopyFrom(status)
    for node in out.nodes:
        node.ClearField("output")
        for a in node.attempts:
            a.ClearField("input")
            a.ClearField("output")
    return out


class RunHistory:
    """Reads of single archived runs (``dago_runs``, ``dago_run_events``)."""

    def __init__(self, db: HistoryDb) -> None:
        self._db = db

    async def _row(self, graph_id: str, column: str) -> tuple[str, Any] | None:
        # ``column`` is one of this module's literals, never a caller's text.
        query = f"SELECT namespace, {column} AS doc FROM dago_runs WHERE graph_id = %s"
        async with self._db.pool.connection() as conn:
            cur = await conn.execute(query.encode(), (graph_id,))
            row = await cur.fetchone()
        return None if row is None else (row["namespace"], row["doc"])

    async def graph(self, graph_id: str) -> Archived | None:
        """GetGraph's answer (namespace included)."""
        row = await self._row(
            graph_id,
            "jsonb_build_object('graph', graph_json, 'inputs', inputs_json, "
            "'graphId', graph_id, 'namespace', namespace)",
        )
        if row is None:
            return None
        msg = json_format.ParseDict(row[1], orchestrator_pb2.GetGraphResponse())
        return Archived(row[0], msg)

    async def status(self, graph_id: str, full: bool) -> Archived | None:
        """The run's final GraphStatus; without ``full``, the BASIC view of it."""
        row = await self._row(graph_id, "status_json")
        if row is None:
            return None
        status = json_format.ParseDict(row[1], execution_pb2.GraphStatus())
        return Archived(row[0], status if full else basic(status))

    async def result(self, graph_id: str) -> Archived | None:
        """GetGraphResult's answer."""
        row = await self._row(graph_id, "result_json")
        if row is None:
            return None
        msg = json_format.ParseDict(row[1], orchestrator_pb2.GetGraphResultResponse())
        return Archived(row[0], msg)

    async def fork_source(self, graph_id: str) -> Archived | None:
        """What a fork of the run is planned from: a :class:`ForkRecord`."""
        async with self._db.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT namespace, state, graph_json, inputs_json, fork_json FROM dago_runs "
                "WHERE graph_id = %s",
                (graph_id,),
            )
            row = await cur.fetchone()
        if row is None:
            return None
        graph = json_format.ParseDict(row["graph_json"], graph_pb2.Graph())
        state = execution_pb2.GraphState.Value(f"GRAPH_STATE_{row['state']}")
        record = ForkRecord(state, graph, row["inputs_json"] or {}, row["fork_json"])
        return Archived(row["namespace"], record)

    async def namespace(self, graph_id: str) -> str | None:
        """The run's namespace; None when it is not archived."""
        async with self._db.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT namespace FROM dago_runs WHERE graph_id = %s", (graph_id,)
            )
            row = await cur.fetchone()
        return None if row is None else str(row["namespace"])

    async def events(self, graph_id: str, after_seq: int, count: int) -> list[execution_pb2.Event]:
        """Up to ``count`` events of the run after ``after_seq``, in order."""
        async with self._db.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT event_json FROM dago_run_events WHERE graph_id = %s AND seq > %s "
                "ORDER BY seq LIMIT %s",
                (graph_id, after_seq, count),
            )
            rows = await cur.fetchall()
        return [json_format.ParseDict(r["event_json"], execution_pb2.Event()) for r in rows]
