"""The archiver: finished runs from Redis to PostgreSQL, exactly once, before they expire.

A run submitted while ``DAGO_POSTGRES_URL`` is set ends in its shard's archive queue
(``ShardKeys.archive``) with no expiry. Each round, for each shard, the archiver takes the
oldest queued runs, reads each one completely from Redis (a :class:`RunSource`), writes it
in one PostgreSQL transaction, and only then calls the ``archived`` function, which lets
the run expire after its retention. A crash between the two leaves the run queued: the
next round writes it again, ``ON CONFLICT DO NOTHING`` keeps the first copy, and it is let
go. Several API replicas archive side by side the same way.

PostgreSQL down: the round fails, the runs stay queued (and in Redis, without expiry), the
archiver logs one warning for the outage, counts each failed round and tries again with a
capped backoff."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import psycopg
from google.protobuf import json_format, struct_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from psycopg.types.json import Jsonb

from dago.config import Settings
from dago.history.db import HistoryDb
from dago.history.migrate import migrate
from dago.llm import models
from dago.llm.providers import default_provider
from dago.observe.metrics import Metrics
from dago.store.client import STORE_ERRORS, raise_if_cancelling
from dago.store.store import Store
from dago.v1 import execution_pb2, graph_pb2, orchestrator_pb2

log = logging.getLogger("dago.history")

BACKOFF_S = (0.5, 30.0)
"""First and longest wait after a failed round (doubling in between)."""


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


class RunSource(Protocol):
    """Reads a finished run completely from Redis (the API layer builds its messages)."""

    async def finished_run(self, shard: int, graph_id: str) -> FinishedRun | None:
        """The run, or None when Redis no longer holds it."""
        ...


def _time(ts: Timestamp) -> datetime | None:
    return ts.ToDatetime(tzinfo=UTC) if ts.seconds or ts.nanos else None


def _json(msg: Any) -> Jsonb:
    return Jsonb(json_format.MessageToDict(msg))


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
    event_count, graph_json, inputs_json, status_json, result_json
) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
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
        run.graph_id, run.namespace, st.name, st.request_id, state,
        _time(st.create_time), _time(st.start_time), ended,
        _json(run.graph.metadata), u.input_tokens, u.output_tokens,
        u.cache_creation_input_tokens, u.cache_read_input_tokens, u.cost_usd, st.steps,
        len(run.events), _json(run.graph), _json(run.inputs), _json(st), _json(run.result),
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


class Archiver:
    """The archive loop of an API process (only when ``DAGO_POSTGRES_URL`` is set)."""

    def __init__(
        self,
        store: Store,
        db: HistoryDb,
        source: RunSource,
        settings: Settings,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._db = db
        self._source = source
        self._settings = settings
        self._metrics = metrics

    async def run(self) -> None:
        """Archive rounds until cancelled: right after a round that found work, else after
        the sweep interval; after a failure, after a doubling backoff. With
        DAGO_MIGRATE_AT_START the schema is brought up to date first (retried the same way).

        Cancelled (SIGTERM) at any point, nothing is lost or doubled: a transaction not
        committed rolls back and its run stays queued; a run committed but not yet let go
        is written again by the next round, which changes nothing."""
        idle = self._settings.sweep_interval_ms / 1000
        delay = BACKOFF_S[0]
        failing = False
        migrated = not self._settings.migrate_at_start
        while True:
            raise_if_cancelling()
            try:
                if not migrated:
                    await self._migrate()
                    migrated = True
                done = await self.round()
            except STORE_ERRORS as e:  # PostgreSQL's errors too: any failure waits and retries
                self._metrics.archive_errors.inc()
                if not failing:
                    log.warning(
                        "archiving finished runs failed, retrying (runs wait in Redis): %s", e
                    )
                failing = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_S[1])
                continue
            if failing:
                log.info("archiving finished runs again")
            failing, delay = False, BACKOFF_S[0]
            if not done:
                await asyncio.sleep(idle)

    async def _migrate(self) -> None:
        async with self._db.pool.connection() as conn:
            for mig in await migrate(conn):
                log.info("applied migration %04d_%s", mig.version, mig.name)

    async def round(self) -> int:
        """Archive up to ``archive_batch`` queued runs of each shard; returns how many."""
        done = 0
        for shard in range(self._settings.shards):
            for gid in await self._store.to_archive(shard, self._settings.archive_batch):
                await self.archive(shard, gid)
                done += 1
        return done

    async def archive(self, shard: int, graph_id: str) -> None:
        """Write one queued run to PostgreSQL (unless it is there), then let it expire."""
        run = await self._source.finished_run(shard, graph_id)
        if run is not None:
            async with self._db.pool.connection() as conn:
                if await write_run(conn, run, self._settings):
                    self._metrics.archived_runs.inc()
        # A queued run Redis lost (flushed by hand) has nothing left to keep: let it go.
        await self._store.archived(shard, graph_id)
