"""A bounded per-process cache of compiled graphs, loaded from Redis on a miss.

A graph's definition and inputs never change after submission, so caching
the compiled form is safe; it only saves work (nothing authoritative lives
here).
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from dago.cel import CelCompiler
from dago.graphdef import CompiledGraph, CompileOptions, GraphInvalid, compile_graph
from dago.store import Store
from dago.v1 import graph_pb2


@dataclass(frozen=True)
class LoadedGraph:
    """A compiled graph with its inputs, or the reason it cannot be compiled here."""

    graph_id: str
    compiled: CompiledGraph | None
    inputs: dict[str, Any]
    problem: str = ""


class GraphCache:
    """LRU of ``LoadedGraph`` by graph id."""

    def __init__(
        self, store: Store, cel: CelCompiler, options: CompileOptions, size: int = 1024
    ) -> None:
        self._store = store
        self._cel = cel
        self._options = options
        self._size = size
        self._entries: OrderedDict[str, LoadedGraph] = OrderedDict()

    def put(self, graph_id: str, compiled: CompiledGraph, inputs: dict[str, Any]) -> None:
        """Remember a graph compiled elsewhere (the submitter already has it)."""
        self._remember(LoadedGraph(graph_id, compiled, inputs))

    def _remember(self, entry: LoadedGraph) -> None:
        self._entries[entry.graph_id] = entry
        self._entries.move_to_end(entry.graph_id)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def cached(self, graph_id: str) -> LoadedGraph | None:
        """The entry if present, without loading."""
        entry = self._entries.get(graph_id)
        if entry is not None:
            self._entries.move_to_end(graph_id)
        return entry

    async def get(self, shard: int, graph_id: str) -> LoadedGraph | None:
        """The compiled graph; None when the graph does not exist (or expired)."""
        entry = self.cached(graph_id)
        if entry is not None:
            return entry
        raw_def, raw_inputs = await self._store.graph_fields(shard, graph_id, "def", "inputs")
        if raw_def is None:
            return None
        graph = graph_pb2.Graph.FromString(raw_def)
        inputs = json.loads(raw_inputs) if raw_inputs else {}
        try:
            entry = LoadedGraph(
                graph_id, compile_graph(graph, inputs, self._cel, self._options), inputs
            )
        except GraphInvalid as e:
            problem = "; ".join(f"{v.field}: {v.description}" for v in e.violations)
            entry = LoadedGraph(graph_id, None, inputs, problem)
        self._remember(entry)
        return entry
