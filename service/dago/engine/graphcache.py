"""A bounded per-process cache of compiled graphs, loaded from Redis on a miss.

A graph's definition and inputs never change after submission, so caching
the compiled form is safe; it only saves work (nothing authoritative lives
here).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

from dago.engine.cel import CelCompiler
from dago.engine.checker import GraphInvalid
from dago.engine.compile import compile_graph
from dago.engine.model import CompiledGraph, CompileOptions
from dago.observe.tracing import trace_id_of
from dago.store.schema import Meta
from dago.store.store import Store
from dago.v1 import graph_pb2

T = TypeVar("T")

_FIELDS = (Meta.DEFINITION, Meta.INPUTS, Meta.TRACEPARENT)


@dataclass(frozen=True)
class LoadedGraph:
    """A compiled graph with its inputs, or the reason it cannot be compiled here."""

    graph_id: str
    compiled: CompiledGraph | None
    inputs: dict[str, Any]
    problem: str = ""
    traceparent: str = ""
    """The W3C trace context of the graph's submission (its attempts' spans join it)."""

    @cached_property
    def name(self) -> str:
        """The graph's name ("" when it cannot be compiled here)."""
        return self.compiled.proto.name if self.compiled is not None else ""

    @cached_property
    def trace_id(self) -> str:
        """The trace id of ``traceparent`` ("" when none), for the logs of every attempt."""
        return trace_id_of(self.traceparent)


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
        # Compiled graphs by content: runs of the same workflow share one compilation
        # (compiling is the most expensive step of a submit and of a worker's first item).
        self._compiled: OrderedDict[bytes, CompiledGraph] = OrderedDict()
        # One thread compiles for this process: the CEL compiler is used from it alone.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dago-compile")
        self._running: dict[bytes, asyncio.Future[CompiledGraph]] = {}

    def put(
        self,
        graph_id: str,
        compiled: CompiledGraph,
        inputs: dict[str, Any],
        traceparent: str = "",
    ) -> None:
        """Remember a graph compiled elsewhere (the submitter already has it)."""
        self._remember(LoadedGraph(graph_id, compiled, inputs, traceparent=traceparent))

    async def compile(
        self,
        raw_def: bytes,
        raw_inputs: bytes,
        graph: graph_pb2.Graph | None = None,
        inputs: Mapping[str, Any] | None = None,
    ) -> CompiledGraph:
        """``compile_graph`` of a definition and inputs (as stored), cached by their content;
        raises GraphInvalid like it. ``graph``/``inputs`` save parsing when the caller has
        them. A compiled graph is never changed after compiling, so runs can share it.

        Compiling runs on the cache's own thread, never on the event loop: a large graph
        costs that thread up to ``CompileOptions.budget_s`` of CPU while the loop goes on
        serving (each CEL compile is bounded, so the loop waits at most a few ms for the
        GIL). Concurrent calls for the same content share one compilation."""
        key = hashlib.blake2b(raw_def + b"\0" + raw_inputs, digest_size=20).digest()
        hit = self._compiled.get(key)
        if hit is not None:
            self._compiled.move_to_end(key)
            return hit
        running = self._running.get(key)
        if running is None:
            loop = asyncio.get_running_loop()
            work = functools.partial(self._compile, raw_def, raw_inputs, graph, inputs)
            running = asyncio.ensure_future(loop.run_in_executor(self._thread, work))
            self._running[key] = running
            running.add_done_callback(lambda _: self._running.pop(key, None))
        compiled = await asyncio.shield(running)
        self._compiled[key] = compiled
        while len(self._compiled) > self._size:
            self._compiled.popitem(last=False)
        return compiled

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the compile thread: other CPU-heavy work of a request (turning a
        large Struct into plain values) stays off the event loop too."""
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _compile(
        self,
        raw_def: bytes,
        raw_inputs: bytes,
        graph: graph_pb2.Graph | None,
        inputs: Mapping[str, Any] | None,
    ) -> CompiledGraph:
        """On the compile thread: parse what the caller did not, and compile."""
        if graph is None:
            graph = graph_pb2.Graph.FromString(raw_def)
        if inputs is None:
            inputs = json.loads(raw_inputs) if raw_inputs else {}
        return compile_graph(graph, inputs, self._cel, self._options)

    def close(self) -> None:
        """Stop the compile thread (compilations under way finish first)."""
        self._thread.shutdown(wait=False, cancel_futures=True)

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
        raw_def, raw_inputs, raw_tp = await self._store.graph_fields(shard, graph_id, *_FIELDS)
        return await self._load(graph_id, raw_def, raw_inputs, raw_tp)

    async def get_many(
        self,
        graphs: Sequence[tuple[int, str]],
        stored: Mapping[str, tuple[bytes | None, bytes | None, bytes | None]] | None = None,
    ) -> dict[str, LoadedGraph | None]:
        """``get`` of several graphs; the ones not cached are read in one round trip, except
        those whose stored (definition, inputs, trace context) the caller has."""
        out: dict[str, LoadedGraph | None] = {}
        missing: dict[str, int] = {}
        for shard, gid in graphs:
            entry = self.cached(gid)
            if entry is not None:
                out[gid] = entry
            elif stored and gid in stored:
                out[gid] = await self._load(gid, *stored[gid])
            else:
                missing[gid] = shard
        if missing:
            pairs = [(shard, gid) for gid, shard in missing.items()]
            rows = await self._store.graph_fields_many(pairs, *_FIELDS)
            for (_, gid), (raw_def, raw_inputs, raw_tp) in zip(pairs, rows, strict=True):
                out[gid] = await self._load(gid, raw_def, raw_inputs, raw_tp)
        return out

    async def _load(
        self,
        graph_id: str,
        raw_def: bytes | None,
        raw_inputs: bytes | None,
        raw_tp: bytes | None,
    ) -> LoadedGraph | None:
        if raw_def is None:
            return None
        inputs = json.loads(raw_inputs) if raw_inputs else {}
        tp = raw_tp.decode() if raw_tp else ""
        try:
            compiled = await self.compile(raw_def, raw_inputs or b"", None, inputs)
            entry = LoadedGraph(graph_id, compiled, inputs, traceparent=tp)
        except GraphInvalid as e:
            problem = "; ".join(f"{v.field}: {v.description}" for v in e.violations)
            entry = LoadedGraph(graph_id, None, inputs, problem, traceparent=tp)
        self._remember(entry)
        return entry
