"""ListGraphs over both stores: the live runs in Redis and the archived ones in PostgreSQL.

Every run has one place in one order, newest first by (create time in ms, graph id), the
same in both stores (Redis orders an index's ties by member bytes, PostgreSQL compares ids
with ``COLLATE "C"``). A page is whatever comes after a cursor, the (ms, id) of the last
position the previous page covered, so it does not matter in which store a run is when a
page is read: a run archived and expired between two pages keeps its place.

Each *source* (one namespace's index on one Redis shard, or ``dago_runs``) returns the
matching runs after the cursor, up to ``page_size + 1``, and its *frontier*: None when it
has nothing more after the cursor, else the last position it looked at (it may hold more
runs after that).
The merge keeps the runs at or before the highest frontier (what comes later could still
be preceded by runs a source did not return), drops the second copy of a run found in both
stores (archived, not yet expired from Redis), and cuts at ``page_size``. An operator's
listing of every namespace reads, per shard, the index of each namespace the shard's set of
namespaces names (``ShardKeys.namespaces``): one source each, merged alike.

Redis has no index on names, metadata or cost: a shard's index is read in batches, the
candidates' meta hashes in one pipelined round trip per batch, and the scan stops after
:data:`SCAN_BUDGET` entries per shard and page (and :data:`SCAN_BYTES` of definitions for
a metadata filter, which reads them). A page can then hold fewer runs than asked
(or none) and still carry a next_page_token: the next page goes on from where the scan
stopped. PostgreSQL applies every filter in SQL (:mod:`dago.history.filters`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from psycopg import sql

from dago.config import DEFAULT_NAMESPACE
from dago.engine.ids import parse_shard
from dago.history.db import HistoryDb
from dago.history.filters import RunFacts, RunFilter, datetime_ms, ms_datetime
from dago.store.schema import Fair, Meta, Usage
from dago.store.store import Store
from dago.v1 import definitions_pb2, execution_pb2, graph_pb2, orchestrator_pb2

Cursor = tuple[int, str]
"""(create time in ms, graph id): a position in the listing order."""

SCAN_BUDGET = 1000
"""Index entries one page reads per shard at most when filters leave most of them out (a
fifth of that when a metadata filter is set: each candidate's definition is read then)."""
SCAN_BYTES = 8 << 20
"""Definition bytes one page reads per shard at most for a metadata filter (definitions
may be up to DAGO_MAX_GRAPH_BYTES each)."""
_BATCH = 100
_METADATA_BATCH = 20

_STATE_NAMES = {v: k.removeprefix("GRAPH_STATE_") for k, v in execution_pb2.GraphState.items()}


@dataclass(frozen=True)
class Listed:
    """A run in a listing, at its place."""

    key: Cursor
    summary: orchestrator_pb2.GraphSummary


@dataclass(frozen=True)
class Part:
    """What one source found after the cursor (see the module)."""

    runs: list[Listed]
    frontier: Cursor | None


@dataclass(frozen=True)
class Page:
    """A page: its runs, newest first, and where the next one starts (None: the end)."""

    runs: list[orchestrator_pb2.GraphSummary]
    next: Cursor | None


def merge(parts: Sequence[Part], size: int) -> Page:
    """One page of ``size`` runs at most out of every source's part."""
    frontiers = [p.frontier for p in parts if p.frontier is not None]
    cut = max(frontiers) if frontiers else None
    found: dict[str, Listed] = {}
    for part in parts:
        for run in part.runs:
            if cut is None or run.key >= cut:
                found.setdefault(run.key[1], run)
    ordered = sorted(found.values(), key=lambda r: r.key, reverse=True)
    if len(ordered) > size:
        return Page([r.summary for r in ordered[:size]], ordered[size - 1].key)
    return Page([r.summary for r in ordered], cut)


class RunListing:
    """ListGraphs' pages (see the module); without ``db``, Redis alone."""

    def __init__(
        self, store: Store, shards: int, db: HistoryDb | None, scan_budget: int = SCAN_BUDGET
    ) -> None:
        self._store = store
        self._shards = shards
        self._db = db
        self._budget = scan_budget

    async def page(self, f: RunFilter, after: Cursor | None, size: int) -> Page:
        """The runs matching ``f`` after ``after``, ``size`` at most."""
        reads = [
            self._shard(shard, ns, f, after, size + 1)
            for shard, namespaces in enumerate(await self._namespaces(f))
            for ns in namespaces
        ]
        if self._db is not None:
            reads.append(self._archived(self._db, f, after, size + 1))
        return merge(await asyncio.gather(*reads), size)

    async def _namespaces(self, f: RunFilter) -> list[list[str]]:
        """Per shard, the namespaces whose indexes the listing reads."""
        if f.namespace is not None:
            return [[f.namespace]] * self._shards
        if f.parent_graph_id:
            # One index, the parent's children (of its namespace), whatever the namespace.
            return [[DEFAULT_NAMESPACE]] * self._shards
        return await self._store.listed_namespaces()

    async def _shard(
        self, shard: int, ns: str, f: RunFilter, after: Cursor | None, want: int
    ) -> Part:
        high = after[0] if after else None
        if f.created_before_ms is not None:
            top = f.created_before_ms - 1
            high = top if high is None else min(high, top)
        extra = (Meta.DEFINITION,) if f.needs_metadata else ()
        budget = max(1, self._budget // 5) if f.needs_metadata else self._budget
        filtered = f.name or f.metadata or f.min_cost_usd or f.parent_graph_id or f.forked_from
        if f.parent_graph_id:
            if parse_shard(f.parent_graph_id, self._shards) != shard:
                return Part([], None)  # children live on their parent's shard
            if f.namespace is not None and not await self._parent_in(shard, f):
                # Another namespace's run: its children are not scanned at all, or a page
                # cut by the scan budget would carry a child's id in its token.
                return Part([], None)
        batch = min(_METADATA_BATCH if f.needs_metadata else _BATCH, budget) if filtered else want
        state = execution_pb2.GraphState.Value(f"GRAPH_STATE_{f.state}") if f.state else 0
        runs: list[Listed] = []
        offset = scanned = read = 0
        while True:
            entries = await self._store.index_range(
                shard, ns, state, high, f.created_after_ms, offset, batch,
                f.parent_graph_id,
            )  # fmt: skip
            offset += len(entries)
            # Ties with the cursor's millisecond: only the ids after it (index order).
            later = [(gid, ms) for gid, ms in entries if after is None or (ms, gid) < after]
            metas = await self._store.metas([(shard, gid) for gid, _ in later], extra)
            for (gid, ms), meta in zip(later, metas, strict=True):
                scanned += 1
                read += len(meta.get(Meta.DEFINITION.encode(), b""))
                # An empty meta: the run expired, its index entry not swept yet.
                if meta and f.matches(_facts(meta, ms, f.needs_metadata)):
                    runs.append(Listed((ms, gid), summary_from_meta(gid, meta)))
                    if len(runs) == want:
                        return Part(runs, (ms, gid))
            if len(entries) < batch:
                return Part(runs, None)
            if scanned >= budget or read >= SCAN_BYTES:
                gid, ms = entries[-1]
                return Part(runs, (ms, gid))

    async def _parent_in(self, shard: int, f: RunFilter) -> bool:
        """Whether the run ``f.parent_graph_id`` (in Redis) is of ``f.namespace``."""
        (ns,) = await self._store.graph_fields(shard, f.parent_graph_id, Meta.NAMESPACE)
        return (ns.decode() if ns else DEFAULT_NAMESPACE) == f.namespace

    async def _archived(self, db: HistoryDb, f: RunFilter, after: Cursor | None, want: int) -> Part:
        where, params = f.where()
        if after is not None:
            # The row comparison (created_at, graph_id) < (...), spelled so that the
            # (namespace, created_at) index bounds the scan and ids compare as bytes.
            where = sql.SQL(
                '{} AND created_at <= %s AND (created_at < %s OR graph_id COLLATE "C" < %s)'
            ).format(where)
            at = ms_datetime(after[0])
            params += [at, at, after[1]]
        query = sql.SQL(
            "SELECT graph_id, namespace, name, request_id, state, created_at, ended_at, steps,"
            " input_tokens, output_tokens, cache_write_tokens, cache_read_tokens, cost_usd,"
            " definition_name, definition_version, definition_digest, parent_graph_id,"
            " parent_node_id, forked_from_graph_id, priority, reused_nodes"
            ' FROM dago_runs WHERE {} ORDER BY created_at DESC, graph_id COLLATE "C" DESC'
            " LIMIT %s"
        ).format(where)
        async with db.pool.connection() as conn:
            cur = await conn.execute(query, [*params, want])
            rows: list[dict[str, Any]] = await cur.fetchall()
        runs = [
            Listed((datetime_ms(r["created_at"]), r["graph_id"]), summary_from_row(r)) for r in rows
        ]
        return Part(runs, runs[-1].key if len(runs) == want else None)


def _facts(meta: dict[bytes, bytes], created_ms: int, with_metadata: bool) -> RunFacts:
    metadata = None
    if with_metadata:
        graph = graph_pb2.Graph.FromString(meta.get(Meta.DEFINITION.encode(), b""))
        metadata = json_format.MessageToDict(graph.metadata)
    return RunFacts(
        state=_STATE_NAMES.get(run_state(meta), ""),
        created_ms=created_ms,
        name=_text(meta, Meta.NAME),
        cost_usd=float(meta.get(Usage.COST.encode(), b"0")),
        metadata=metadata,
        definition_name=_text(meta, Meta.DEF_NAME),
        definition_version=_int(meta, Meta.DEF_VERSION),
        parent_graph_id=_text(meta, Meta.PARENT_GRAPH),
        namespace=_text(meta, Meta.NAMESPACE) or DEFAULT_NAMESPACE,
        forked_from=_text(meta, Meta.FORKED_FROM),
    )


def run_state(meta: dict[bytes, bytes]) -> execution_pb2.GraphState.ValueType:
    """A run's state from its meta hash: PAUSED while its budget paused it (stored as
    RUNNING with ``Meta.PAUSED``, see schema.Meta), else the stored one."""
    state = execution_pb2.GraphState.ValueType(_int(meta, Meta.STATE))
    if state == execution_pb2.GRAPH_STATE_RUNNING and meta.get(Meta.PAUSED.encode()) == b"1":
        return execution_pb2.GRAPH_STATE_PAUSED
    return state


def _text(meta: dict[bytes, bytes], name: str) -> str:
    return meta.get(name.encode(), b"").decode()


def _int(meta: dict[bytes, bytes], name: str) -> int:
    return int(meta.get(name.encode(), b"0"))


def definition_ref(meta: dict[bytes, bytes], out: definitions_pb2.DefinitionRef) -> None:
    """Fill ``out`` with the definition a run in Redis was submitted from (nothing for a
    graph sent whole: ``out``'s message stays unset)."""
    name = _text(meta, Meta.DEF_NAME)
    if name:
        out.name = name
        out.version = _int(meta, Meta.DEF_VERSION)
        out.digest = _text(meta, Meta.DEF_DIGEST)


def summary_from_meta(graph_id: str, meta: dict[bytes, bytes]) -> orchestrator_pb2.GraphSummary:
    """A listing entry of a run in Redis (its meta hash's summary fields)."""
    s = orchestrator_pb2.GraphSummary(
        graph_id=graph_id,
        name=_text(meta, Meta.NAME),
        state=run_state(meta),
        request_id=_text(meta, Meta.REQUEST_ID),
        namespace=_text(meta, Meta.NAMESPACE) or DEFAULT_NAMESPACE,
        steps=_int(meta, Meta.STEPS),
        forked_from=_text(meta, Meta.FORKED_FROM),
        parent_graph_id=_text(meta, Meta.PARENT_GRAPH),
        parent_node_id=_text(meta, Meta.PARENT_NODE),
        priority=_int(meta, Meta.PRIORITY) or Fair.PRIORITY_DEFAULT,
        reused_nodes=_int(meta, Meta.REUSED),
    )
    for field, ts in ((Meta.CREATED, s.create_time), (Meta.ENDED, s.end_time)):
        if _int(meta, field):
            ts.FromMilliseconds(_int(meta, field))
    u = s.usage
    u.input_tokens = _int(meta, Usage.INPUT)
    u.output_tokens = _int(meta, Usage.OUTPUT)
    u.cache_creation_input_tokens = _int(meta, Usage.CACHE_WRITE)
    u.cache_read_input_tokens = _int(meta, Usage.CACHE_READ)
    u.cost_usd = float(meta.get(Usage.COST.encode(), b"0"))
    definition_ref(meta, s.definition)
    return s


def summary_from_row(row: dict[str, Any]) -> orchestrator_pb2.GraphSummary:
    """A listing entry of an archived run (a ``dago_runs`` row)."""
    s = orchestrator_pb2.GraphSummary(
        graph_id=row["graph_id"],
        name=row["name"],
        state=execution_pb2.GraphState.Value(f"GRAPH_STATE_{row['state']}"),
        request_id=row["request_id"],
        namespace=row["namespace"],
        steps=row["steps"],
        parent_graph_id=row["parent_graph_id"] or "",
        parent_node_id=row["parent_node_id"] or "",
        forked_from=row["forked_from_graph_id"] or "",
        priority=row["priority"] or Fair.PRIORITY_DEFAULT,
        reused_nodes=row["reused_nodes"],
    )
    s.create_time.FromMilliseconds(datetime_ms(row["created_at"]))
    s.end_time.FromMilliseconds(datetime_ms(row["ended_at"]))
    s.usage.input_tokens = row["input_tokens"]
    s.usage.output_tokens = row["output_tokens"]
    s.usage.cache_creation_input_tokens = row["cache_write_tokens"]
    s.usage.cache_read_input_tokens = row["cache_read_tokens"]
    s.usage.cost_usd = row["cost_usd"]
    if row["definition_name"]:
        s.definition.name = row["definition_name"]
        s.definition.version = row["definition_version"] or 0
        s.definition.digest = row["definition_digest"] or ""
    return s
