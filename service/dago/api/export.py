"""A finished run read completely from Redis, for the archiver (dago.history.archive).

The messages are the ones the API answers with (GetGraph, GetGraphStatus FULL,
GetGraphResult, every event), built by the same code (dago.api.views), so a run read back
from PostgreSQL is what it was in Redis. Read in-process, a run is not bound by the
response size that makes the API send a large one in parts."""

from __future__ import annotations

import json
from typing import Any

from google.protobuf import struct_pb2

from dago.api import fork as fork_rules
from dago.api.auth import DEFAULT_NAMESPACE
from dago.api.views import graph_result, graph_status
from dago.engine.graphcache import GraphCache
from dago.history.write import FinishedRun
from dago.store.events import decode
from dago.store.schema import Meta
from dago.store.store import Store
from dago.v1 import graph_pb2

PAGE = 1000
"""Events per read."""


class RedisRuns:
    """The :class:`dago.history.archive.RunSource` of the API process."""

    def __init__(self, store: Store, graphs: GraphCache) -> None:
        self._store = store
        self._graphs = graphs

    async def finished_run(self, shard: int, graph_id: str) -> FinishedRun | None:
        """The run as the API shows it; None when Redis holds none by this id."""
        snap = await self._store.snapshot(shard, graph_id, records=True)
        if not snap.meta:
            return None
        ns = snap.meta.get(Meta.NAMESPACE.encode())
        namespace = ns.decode() if ns else DEFAULT_NAMESPACE
        status = graph_status(graph_id, snap, full=True)
        status.namespace = namespace
        loaded = await self._graphs.get(shard, graph_id)
        if loaded is None:
            return None
        graph = graph_pb2.Graph.FromString(snap.meta[Meta.DEFINITION.encode()])
        run = FinishedRun(
            graph_id=graph_id,
            namespace=namespace,
            graph=graph,
            inputs=_struct(snap.meta.get(Meta.INPUTS.encode())),
            status=status,
            result=graph_result(graph_id, snap, loaded),
            events=[],
            fork=await self._fork_record(shard, graph_id, graph, snap.nodes),
        )
        after = 0
        while page := await self._store.events(shard, graph_id, after, PAGE):
            run.events.extend(decode(graph_id, seq, stored) for seq, stored in page)
            after = page[-1][0]
        return run

    async def _fork_record(
        self, shard: int, graph_id: str, graph: graph_pb2.Graph, nodes: dict[bytes, bytes]
    ) -> dict[str, Any]:
        """What ForkGraph needs of the run once Redis let it go (``fork.record``): its
        maps' completed items read in pages."""
        items: dict[str, list[fork_rules.Item]] = {}
        for m in fork_rules.maps_done(graph, nodes):
            found = items.setdefault(m, [])
            async for page in self._store.completed_items(shard, graph_id, m):
                found.extend((i, v.decode(), o.decode()) for i, v, o in page)
        return fork_rules.record(graph, nodes, items)


def _struct(raw: bytes | None) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(json.loads(raw or b"{}"))
    return s
