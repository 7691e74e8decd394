"""The ``dago.v1.OrchestratorService`` servicer."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import grpc

from dago.api import errors, queries, tokens
from dago.api import fork as fork_rules
from dago.api.admission import FairGate, QueueFull
from dago.api.archived import ArchivedReads
from dago.api.auth import DEFAULT_NAMESPACE, Authenticator
from dago.api.children import has_references, pin_references
from dago.api.definitions import DefinitionServicer, parse_reference
from dago.api.errors import guard, guard_stream
from dago.api.limits import check_changed, limits_args
from dago.api.quotas import Quotas
from dago.api.views import (
    ITEM_FIELDS,
    MAP_FIELDS,
    RUNNING_FIELDS,
    TERMINAL_STATES,
    attempt,
    executions,
    fill_wait,
    graph_result,
    graph_state,
    graph_status,
    item_state,
    map_item,
    map_progress,
)
from dago.api.watch import EventHub
from dago.config import Settings, parse_rate_limits
from dago.engine.budget import DEFAULT_WARN_SHARE
from dago.engine.cel import CelCompiler
from dago.engine.checker import GraphInvalid, Violation
from dago.engine.compile import ANY_INPUTS
from dago.engine.fields import NOT_FINITE, clip, first_non_finite
from dago.engine.graphcache import GraphCache
from dago.engine.ids import new_graph_id, parse_shard
from dago.engine.model import CompiledGraph, CompileOptions
from dago.engine.waits import (
    AGENT_DECISIONS,
    decisions_of,
    edited_arguments_problem,
    payload_problem,
)
from dago.history.db import HistoryDb
from dago.history.listing import RunListing
from dago.history.usage import UsageReport
from dago.observe.metrics import Metrics
from dago.observe.tracing import Tracing, trace_id_of
from dago.store.events import Entries, batched, decode, error_from
from dago.store.functions import RateOp, SignalArgs, Signalled, SubmitArgs, rate_limit_args
from dago.store.schema import Decision, Fair, Meta, Node, Request
from dago.store.schema import Wait as StoredWait
from dago.store.store import SEED_PAGE, DeadLetterEntry, RecordId, Store
from dago.store.values import dumps, to_plain
from dago.v1 import (
    definitions_pb2,
    execution_pb2,
    graph_pb2,
    orchestrator_pb2,
    orchestrator_pb2_grpc,
)

Ctx = grpc.aio.ServicerContext[Any, Any]
log = logging.getLogger("dago.api")
_STATE_NAMES = {v: k.removeprefix("GRAPH_STATE_") for k, v in execution_pb2.GraphState.items()}


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServiceServicer):
    """Validates and submits graphs; answers reads from Redis, and for runs Redis no longer
    holds from the archive (``ArchivedReads``)."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        cel: CelCompiler,
        options: CompileOptions,
        graphs: GraphCache,
        hub: EventHub,
        auth: Authenticator,
        gate: FairGate,
        tracing: Tracing | None = None,
        archive: ArchivedReads | None = None,
        history: HistoryDb | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._auth = auth
        self._metrics = metrics
        self._quotas = Quotas(store, settings, metrics)
        # Runs Redis no longer holds: answered from PostgreSQL when DAGO_POSTGRES_URL is set.
        self._archive = archive or ArchivedReads(None, auth, settings)
        self._gate = gate
        self._tracing = tracing or Tracing("dago-api", {})
        self._store = store
        self._settings = settings
        self._cel = cel
        self._options = options
        self._graphs = graphs
        self._hub = hub
        self._operators = frozenset(
            n.strip() for n in settings.operator_namespaces.split(",") if n.strip()
        )
        self._listing = RunListing(store, settings.shards, history)
        # Same server, auth and namespaces; publishes are validated as submits are.
        self.definitions = DefinitionServicer(
            store,
            auth,
            self._validate_graph,
            (settings.max_definitions, settings.max_definition_versions),
        )
        self._usage = UsageReport(history) if history is not None else None

    def close(self) -> None:
        """Stop the compile thread (the server stopped)."""
        self._graphs.close()

    def _owned(self, graph_id: str, ns: bytes | None) -> None:
        """NOT_FOUND unless the caller's namespace owns the graph: another namespace's
        graphs are indistinguishable from graphs that do not exist."""
        if not self._mine(ns):
            raise errors.not_found("graph", graph_id)

    def _mine(self, ns: bytes | None) -> bool:
        """Whether a graph whose meta ``ns`` field is ``ns`` is the caller's namespace's."""
        return (ns.decode() if ns else DEFAULT_NAMESPACE) == self._auth.current()

    async def _visible_dead_letters(
        self, shard: int, before: str | None, count: int
    ) -> list[DeadLetterEntry]:
        """Up to ``count`` dead letters of one shard from ``before`` down whose graph is the
        caller's namespace's; other namespaces' entries are skipped, not counted."""
        out: list[DeadLetterEntry] = []
        # Read in batches of DEAD_LETTER_BATCH at least: pages of one entry read in batches
        # of two made one call cost a round trip per two of other tenants' dead letters
        # (the stream holds up to 100,000 a shard).
        want = max(count, DEAD_LETTER_BATCH)
        while len(out) < count:
            batch = await self._store.dead_letters(shard, before, want)
            if not batch:
                break
            metas = await self._store.metas([(shard, e.graph_id) for e in batch])
            out += [e for e, meta in zip(batch, metas, strict=True) if self._letter_mine(meta)]
            if len(batch) < want:
                break
            before = "(" + batch[-1].entry_id  # exclusive: continue below the last entry read
        return out[:count]

    def _letter_mine(self, meta: dict[bytes, bytes]) -> bool:
        """Whether a dead letter whose graph's meta hash is ``meta`` is the caller's. The
        stream outlives its graphs: once a graph expired (``meta`` empty) nothing says
        whose it was, and a missing namespace must not read as ``default`` (a key of the
        default namespace would see other tenants' errors): operators only."""
        if not meta:
            return self._operator()
        return self._mine(meta.get(Meta.NAMESPACE.encode()))

    async def _check_dead_letter(self, shard: int, entry_id: str, name: str) -> None:
        """NOT_FOUND unless the dead letter's graph is the caller's namespace's."""
        found = await self._store.dead_letters(shard, entry_id, 1)
        if found and found[0].entry_id == entry_id:
            ns, state = await self._store.graph_fields(
                shard, found[0].graph_id, Meta.NAMESPACE, Meta.STATE
            )
            meta = {} if state is None else {Meta.NAMESPACE.encode(): ns or b""}
            if not self._letter_mine(meta):
                raise errors.not_found("dead letter", name)

    async def _check_size(self, shard: int, graph_id: str, share: int, what: str) -> None:
        """FAILED_PRECONDITION when a response holding 1/``share`` of what the run stored
        would not fit a response (half of DAGO_MAX_MESSAGE_BYTES), before anything of it is
        read; NOT_FOUND for a graph the caller may not see."""
        stored, ns = await self._store.graph_fields(shard, graph_id, Meta.BYTES, Meta.NAMESPACE)
        if stored is None:
            return  # no such graph: the read that follows says so
        self._owned(graph_id, ns)
        budget = self._settings.max_message_bytes // 2
        if int(stored) // share > budget:
            raise errors.failed_precondition(
                "GRAPH_TOO_LARGE",
                graph_id,
                f"graph {graph_id} stored {int(stored)} bytes, more than {what} can carry in "
                f"one response ({budget} bytes): read it with GetGraphStatus "
                "view=GRAPH_STATUS_VIEW_BASIC and each node's attempts with ListNodeAttempts",
            )

    def _shard(self, graph_id: str, field: str = "graph_id") -> int:
        if not graph_id:
            raise errors.invalid_field(field, "is required")
        if len(graph_id) > MAX_ID_CHARS:
            raise errors.invalid_field(field, f"is not a graph id (over {MAX_ID_CHARS} characters)")
        shard = parse_shard(graph_id, self._settings.shards)
        if shard is None:
            raise errors.not_found("graph", graph_id)
        return shard

    @guard
    async def SubmitGraph(
        self, request: orchestrator_pb2.SubmitGraphRequest, context: Ctx
    ) -> orchestrator_pb2.SubmitGraphResponse:
        """Validate, then create the run (or return the one request_id names)."""
        return await self._submit(request)

    # Yields bytes, as WatchGraph does (registered without a response serializer).
    @guard_stream
    async def RunGraph(
        self, request: orchestrator_pb2.RunGraphRequest, context: Ctx
    ) -> AsyncIterator[bytes]:
        """Submit (as SubmitGraph), then stream the run's events from its start (as
        WatchGraph): a run in one call. A request_id already used streams that run again."""
        submitted = await self._submit(request)
        async for raw in self._events(submitted.graph_id, 0, request.batch, request.item_events):
            yield raw

    async def _submit(
        self,
        request: orchestrator_pb2.SubmitGraphRequest | orchestrator_pb2.RunGraphRequest,
        fork: _Fork | None = None,
    ) -> orchestrator_pb2.SubmitGraphResponse:
        rid = request.request_id
        if len(rid) > 128 or not rid.isprintable():
            raise errors.invalid_field("request_id", "use at most 128 printable characters")
        namespace = self._auth.current()
        priority = request.priority or Fair.PRIORITY_DEFAULT
        if not Fair.PRIORITY_MIN <= priority <= Fair.PRIORITY_MAX:
            raise errors.invalid_field(
                "priority",
                f"must be {Fair.PRIORITY_MIN} to {Fair.PRIORITY_MAX} (higher first), or 0 for "
                f"the default {Fair.PRIORITY_DEFAULT}",
            )
        digest = _body_digest(request) if rid else ""  # only a request_id is checked against it
        if fork is not None and rid:
            digest = fork.digest
        ref: definitions_pb2.DefinitionVersion | None = None
        if request.definition:
            if request.HasField("graph"):
                raise errors.invalid_field("definition", "give either a graph or a definition")
            try:
                ref = await self._resolve(request.definition, request.allow_deprecated)
            except errors.ApiError as e:
                # A retry of a run already created (its version deprecated since) is that run.
                first = await self._earlier(rid, digest, namespace) if rid else None
                if first is None or e.code != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                return first
            resolved = type(request).FromString(request.SerializeToString())
            resolved.graph.CopyFrom(ref.graph)
            request = resolved
        elif not request.HasField("graph"):
            raise errors.invalid_field("graph", "is required (or give a definition)")
        if has_references(request.graph):
            # Subgraph bodies by reference: resolved and pinned now (api/children.py).
            pinned = type(request).FromString(request.SerializeToString())
            allow = request.allow_deprecated

            async def resolve(reference: str, at: str) -> definitions_pb2.DefinitionVersion:
                return await self._resolve(reference, allow, at)

            await pin_references(pinned.graph, resolve, self._settings.max_graph_depth)
            request = pinned
        inputs, raw_inputs, raw_def, compiled = await self._check(request, fork=fork)
        if isinstance(request, orchestrator_pb2.SubmitGraphRequest) and request.validate_only:
            return orchestrator_pb2.SubmitGraphResponse()
        entries = compiled.entries
        if fork is not None:
            fork.plan = fork_rules.plan(compiled, fork.nodes, fork.from_nodes, fork.failed_only)
            if not fork.plan.run:
                raise errors.invalid_field(
                    "from_nodes", "nothing would run again: name nodes, or fork a failed run"
                )
            if fork.dry_run:
                return orchestrator_pb2.SubmitGraphResponse()
            running = set(fork.plan.run)
            entries = [n for n in entries if n in running]

        await self._quotas.check(namespace)
        shards = self._settings.shards
        # The request record and the graph share a slot so one script checks and creates.
        scoped = rid if namespace == DEFAULT_NAMESPACE else f"{namespace}/{rid}"
        if rid:
            shard = _stable_shard(scoped, shards)
        elif fork is not None and fork.items is None:
            shard = self._shard(fork.source)  # its map seeds are copied inside Redis (seed.lua)
        else:
            shard = random.randrange(shards)
        graph_id = new_graph_id(shard)
        active_limit, max_active = await self._quotas.active_cap(namespace, shard)
        g = request.graph
        deadline_s = (
            g.limits.deadline.ToMilliseconds() / 1000
            if g.limits.HasField("deadline")
            else self._settings.default_deadline_s
        )
        if fork is not None and fork.plan and fork.plan.maps:
            await self._seed(fork, shard, graph_id, fork.plan.maps)
        # The trace context every attempt of the graph joins (kept with the graph).
        traceparent = self._tracing.traceparent()
        args = SubmitArgs(
            graph_id=graph_id,
            request_id=rid,
            body_hash=digest,
            name=g.name,
            definition=raw_def,
            inputs=raw_inputs,
            node_ids=dumps(list(compiled.nodes)),
            start_plans=dumps(list(compiled.start_plans.values())),
            entries=dumps(entries),
            max_steps=g.limits.max_steps,
            max_tokens=g.limits.max_tokens,
            max_cost=repr(g.limits.max_cost_usd),
            deadline_ms=int(deadline_s * 1000),
            retention_s=self._settings.retention_s,
            namespace=namespace,
            max_events=self._settings.max_events_per_graph,
            max_bytes=self._settings.max_run_bytes,
            traceparent=traceparent,
            archive=int(bool(self._settings.postgres_url)),
            forked_from=fork.source if fork is not None else "",
            reused=dumps(fork.plan.reused) if fork is not None and fork.plan else "[]",
            def_name=ref.name if ref else "",
            def_version=ref.version if ref else 0,
            def_digest=ref.digest if ref else "",
            priority=priority,
            on_exceed=g.limits.on_exceed,
            warn_share=repr(g.limits.warn_share or DEFAULT_WARN_SHARE),
            max_active=max_active,
        )
        submitted = await self._store.submit(shard, args, compiled.topology)
        status, gid, state = submitted.outcome, submitted.graph_id, submitted.state
        if status == "quota":
            self._quotas.refuse_active(namespace, active_limit)
        if status == "conflict":
            raise errors.already_exists(
                rid,
                f"request_id {rid!r} was already used for graph {gid} with a different request; "
                "send the same request to get that graph, or use a new request_id",
            )
        if status == "created":
            self._graphs.put(gid, compiled, inputs, traceparent)
            log.info(
                "graph submitted",
                extra={
                    "graph_id": gid,
                    "trace_id": trace_id_of(traceparent),
                    "graph_name": clip(g.name),
                },
            )
        return orchestrator_pb2.SubmitGraphResponse(
            graph_id=gid,
            created=status == "created",
            state=execution_pb2.GraphState.ValueType(state),
            namespace=namespace,
        )

    async def _seed(
        self, fork: _Fork, shard: int, graph_id: str, maps: dict[str, tuple[int, int]]
    ) -> None:
        """The source's completed map items, for the fork's maps to reuse at expand: copied
        inside Redis from a run there, written in pages from the history's record."""
        ttl = self._settings.retention_s
        if fork.items is None:
            totals = {m: done + rest for m, (done, rest) in maps.items()}
            await self._store.seed_items(
                self._shard(fork.source), fork.source, shard, graph_id, totals, ttl
            )
            return
        for m in maps:
            items = fork.items.get(m, [])
            for first in range(0, len(items), SEED_PAGE):
                page = items[first : first + SEED_PAGE]
                await self._store.write_seeds(shard, graph_id, m, page, ttl)
            await self._store.seed_list(shard, graph_id, m, [i for i, _, _ in items], ttl)

    async def _check(
        self,
        request: orchestrator_pb2.SubmitGraphRequest | orchestrator_pb2.RunGraphRequest,
        any_inputs: bool = False,
        fork: _Fork | None = None,
    ) -> tuple[dict[str, Any], bytes, bytes, CompiledGraph]:
        """Validate a request's graph and inputs and compile them (the one validation path of
        submits and of published definitions): the inputs as values and as stored, the
        definition as stored, the compiled graph. INVALID_ARGUMENT naming the fields.
        ``any_inputs``: a graph without its run's inputs yet (a definition at publish), so
        every input it names counts as given. ``fork``: a fork's patched graph, whose
        violations are named after its patches (``node_patches[<id>]...``)."""
        namespace = self._auth.current()
        limit = self._settings.max_inputs_bytes
        try:
            # Off the event loop (a large request takes milliseconds to seconds of CPU), in
            # this namespace's turn: one tenant's flood of graphs cannot starve another's.
            async with self._gate.hold(namespace):
                inputs, raw_inputs, raw_def = await self._graphs.offload(_prepare, request, limit)
                if any_inputs:  # a cache key of its own: no run is compiled with ANY_INPUTS
                    compiled = await self._graphs.compile(
                        raw_def, b"\0any", request.graph, ANY_INPUTS
                    )
                else:
                    compiled = await self._graphs.compile(
                        raw_def, raw_inputs, request.graph, inputs
                    )
        except GraphInvalid as e:
            if fork is not None:
                e = fork_rules.rename_violations(e, request.graph, set(fork.patched))
            raise errors.invalid(e.violations) from None
        except QueueFull:
            raise errors.resource_exhausted(
                f"namespace:{namespace}",
                f"namespace {namespace!r} already has {self._gate.waiting(namespace)} graphs "
                "waiting to be checked by this API server; retry when some were answered",
                self._gate.waiting(namespace),
            ) from None
        return inputs, raw_inputs, raw_def, compiled

    async def _earlier(
        self, rid: str, digest: str, namespace: str
    ) -> orchestrator_pb2.SubmitGraphResponse | None:
        """The run an earlier submission of this very request (request_id and body) created,
        if any (as the submit function answers a retry)."""
        scoped = rid if namespace == DEFAULT_NAMESPACE else f"{namespace}/{rid}"
        shard = _stable_shard(scoped, self._settings.shards)
        key = self._store.keys.shard(shard).request(rid, namespace)
        gid, body = await self._store.redis.hmget(key, [Request.GRAPH, Request.BODY_HASH])
        if gid is None or (body or b"").decode() != digest:
            return None
        (state,) = await self._store.graph_fields(shard, gid.decode(), Meta.STATE)
        return orchestrator_pb2.SubmitGraphResponse(
            graph_id=gid.decode(),
            created=False,
            state=execution_pb2.GraphState.ValueType(int(state or 0)),
            namespace=namespace,
        )

    async def _resolve(
        self, reference: str, allow_deprecated: bool, field: str = "definition"
    ) -> definitions_pb2.DefinitionVersion:
        """The version a SubmitGraphRequest.definition (or a subgraph node's, at ``field``)
        names, with its graph; NOT_FOUND for an unknown one, FAILED_PRECONDITION for a
        deprecated one unless allowed."""
        name, selector = parse_reference(reference, field)
        found = await self.definitions.reads.resolve(self._auth.current(), name, selector, field)
        if found.deprecated and not allow_deprecated:
            raise errors.failed_precondition(
                "DEFINITION_DEPRECATED",
                f"{name}@{found.version}",
                f"definition {name} version {found.version} is deprecated: run another "
                "version, or set allow_deprecated",
            )
        return found

    async def _validate_graph(self, graph: graph_pb2.Graph) -> None:
        """Check a graph to publish as a submit of it is checked, but for the inputs it names
        (a run of it brings them: its submit checks them)."""
        await self._check(orchestrator_pb2.SubmitGraphRequest(graph=graph), any_inputs=True)

    @guard
    async def ForkGraph(
        self, request: orchestrator_pb2.ForkGraphRequest, context: Ctx
    ) -> orchestrator_pb2.ForkGraphResponse:
        """A new run reusing the recorded outputs of the nodes not downstream of the re-run
        set (docs/semantics.md, "Fork"); the plan only with dry_run."""
        source = request.graph_id
        shard = self._shard(source)
        if request.failed_only and request.from_nodes:
            raise errors.invalid_field("failed_only", "give from_nodes or failed_only, not both")
        if not request.failed_only and not request.from_nodes:
            raise errors.invalid_field(
                "from_nodes", "name the nodes to run again, or set failed_only"
            )
        run = await self._fork_source(shard, source)
        if run.state not in TERMINAL_STATES:
            raise errors.failed_precondition(
                "GRAPH_NOT_FINISHED",
                source,
                f"graph {source} is {_STATE_NAMES[run.state]}; a run can be forked once it "
                "has completed, failed or been cancelled (cancel it first)",
            )
        graph = run.graph
        known = {n.id for n in graph.nodes}
        named: set[str] = set()
        for i, nid in enumerate(request.from_nodes):
            if nid not in known:
                raise errors.invalid_field(
                    f"from_nodes[{i}]", f"names no node of the graph: {clip(nid)!r}"
                )
            if nid in named:  # so the list is never longer than the graph (1,000 nodes)
                raise errors.invalid_field(f"from_nodes[{i}]", f"names node {nid!r} again")
            named.add(nid)
        try:
            patched = fork_rules.patch_graph(graph, dict(request.node_patches))
        except GraphInvalid as e:
            raise errors.invalid(e.violations) from None
        inputs = run.inputs
        if request.HasField("inputs_patch"):
            inputs = fork_rules.merge_patch(inputs, to_plain(request.inputs_patch))
        sub = orchestrator_pb2.SubmitGraphRequest(graph=patched, request_id=request.request_id)
        sub.inputs.update(inputs)
        body = orchestrator_pb2.ForkGraphRequest()
        body.CopyFrom(request)
        body.dry_run = False
        body.request_id = ""
        fork = _Fork(
            source=source,
            nodes=run.nodes,
            items=run.items,
            from_nodes=list(request.from_nodes),
            dry_run=request.dry_run,
            patched=list(request.node_patches),
            digest="fork:" + hashlib.sha256(body.SerializeToString(deterministic=True)).hexdigest(),
            failed_only=request.failed_only,
        )
        submitted = await self._submit(sub, fork)
        p = fork.plan
        assert p is not None
        return orchestrator_pb2.ForkGraphResponse(
            graph_id=submitted.graph_id,
            created=submitted.created,
            reused_nodes=[r.node for r in p.reused],
            run_nodes=p.run,
            cost_saved_usd=p.cost_saved,
            cost_estimate_usd=p.cost_estimate,
            forked_from=source,
            map_items=[
                orchestrator_pb2.ForkMapItems(node_id=n, items_reused=done, items_to_run=rest)
                for n, (done, rest) in p.maps.items()
            ],
        )

    async def _fork_source(self, shard: int, graph_id: str) -> fork_rules.ForkSource:
        """The run to fork: from Redis, else (its state expired or was pruned) from the
        history, which keeps what a fork needs (``fork.record``)."""
        snap = await self._store.snapshot(shard, graph_id, records=False)
        if not snap.meta:
            return await self._archive.fork_source(graph_id)
        self._owned(graph_id, snap.meta.get(Meta.NAMESPACE.encode()))
        return fork_rules.ForkSource(
            graph_id=graph_id,
            state=graph_state(snap.meta),
            graph=graph_pb2.Graph.FromString(snap.meta[Meta.DEFINITION.encode()]),
            inputs=json.loads(snap.meta.get(Meta.INPUTS.encode()) or b"{}"),
            nodes=snap.nodes,
        )

    @guard
    async def GetGraph(
        self, request: orchestrator_pb2.GetGraphRequest, context: Ctx
    ) -> orchestrator_pb2.GetGraphResponse:
        """The definition and inputs as submitted."""
        shard = self._shard(request.graph_id)
        raw_def, raw_inputs, ns = await self._store.graph_fields(
            shard, request.graph_id, Meta.DEFINITION, Meta.INPUTS, Meta.NAMESPACE
        )
        if raw_def is None:
            return await self._archive.graph(request.graph_id)
        self._owned(request.graph_id, ns)
        resp = orchestrator_pb2.GetGraphResponse(
            graph=graph_pb2.Graph.FromString(raw_def),
            graph_id=request.graph_id,
            namespace=self._auth.current(),
        )
        resp.inputs.update(json.loads(raw_inputs or b"{}"))
        return resp

    @guard
    async def GetGraphStatus(
        self, request: orchestrator_pb2.GetGraphStatusRequest, context: Ctx
    ) -> orchestrator_pb2.GetGraphStatusResponse:
        """Per-node states, attempts, timings and usage (with outputs and attempt inputs and
        outputs unless the view is BASIC)."""
        shard = self._shard(request.graph_id)
        if request.view not in orchestrator_pb2.GraphStatusView.values():
            raise errors.invalid_field("view", f"unknown view {request.view}")
        full = request.view != orchestrator_pb2.GRAPH_STATUS_VIEW_BASIC
        if full:
            await self._check_size(shard, request.graph_id, 1, "GRAPH_STATUS_VIEW_FULL")
        snap = await self._store.snapshot(shard, request.graph_id, records=True)
        if not snap.meta:
            status = await self._archive.status(request.graph_id, full)
            return orchestrator_pb2.GetGraphStatusResponse(status=status)
        self._owned(request.graph_id, snap.meta.get(Meta.NAMESPACE.encode()))
        status = graph_status(request.graph_id, snap, full)
        status.namespace = self._auth.current()
        return orchestrator_pb2.GetGraphStatusResponse(status=status)

    @guard
    async def GetGraphResult(
        self, request: orchestrator_pb2.GetGraphResultRequest, context: Ctx
    ) -> orchestrator_pb2.GetGraphResultResponse:
        """Outputs of a finished run; FAILED_PRECONDITION while it runs."""
        shard = self._shard(request.graph_id)
        # Each output is stored three times (node, attempt record, event): a third of what
        # the run stored bounds the result.
        await self._check_size(shard, request.graph_id, 3, "GetGraphResult")
        snap = await self._store.snapshot(shard, request.graph_id, records=False)
        if not snap.meta:
            return await self._archive.result(request.graph_id)
        self._owned(request.graph_id, snap.meta.get(Meta.NAMESPACE.encode()))
        state = graph_state(snap.meta)
        if state not in TERMINAL_STATES:
            raise errors.failed_precondition(
                "GRAPH_NOT_FINISHED",
                request.graph_id,
                f"graph {request.graph_id} is {_STATE_NAMES[state]}; its result exists once it "
                "finishes (watch it with WatchGraph, or poll GetGraphStatus)",
            )
        loaded = await self._graphs.get(shard, request.graph_id)
        if loaded is None:  # expired since the snapshot
            return await self._archive.result(request.graph_id)
        return graph_result(request.graph_id, snap, loaded)

    @guard
    async def CancelGraph(
        self, request: orchestrator_pb2.CancelGraphRequest, context: Ctx
    ) -> orchestrator_pb2.CancelGraphResponse:
        """Stop running nodes, skip pending ones."""
        shard = self._shard(request.graph_id)
        reason = request.reason or "cancelled by a client"
        if len(reason) > 1024:
            raise errors.invalid_field("reason", "use at most 1024 characters")
        # A graph's namespace never changes, so checking before the script is safe.
        (ns,) = await self._store.graph_fields(shard, request.graph_id, Meta.NAMESPACE)
        self._owned(request.graph_id, ns)
        outcome, state = await self._store.cancel(shard, request.graph_id, reason)
        if outcome == "missing":
            raise errors.not_found("graph", request.graph_id)
        if outcome == "finished":
            name = _STATE_NAMES[execution_pb2.GraphState.ValueType(state)]
            raise errors.failed_precondition(
                "GRAPH_FINISHED",
                request.graph_id,
                f"graph {request.graph_id} already finished ({name}); there is nothing to cancel",
            )
        return orchestrator_pb2.CancelGraphResponse(state=execution_pb2.GRAPH_STATE_CANCELLED)

    @guard
    async def UpdateGraphLimits(
        self, request: orchestrator_pb2.UpdateGraphLimitsRequest, context: Ctx
    ) -> orchestrator_pb2.UpdateGraphLimitsResponse:
        """Raise a run's budgets; resume it when it is paused (dago.api.limits)."""
        shard = self._shard(request.graph_id)
        args = limits_args(request)
        (ns,) = await self._store.graph_fields(shard, request.graph_id, Meta.NAMESPACE)
        self._owned(request.graph_id, ns)
        changed = await self._store.limits(shard, args)
        check_changed(request.graph_id, changed)
        snap = await self._store.snapshot(shard, request.graph_id, records=False)
        status = graph_status(request.graph_id, snap, False)
        status.namespace = self._auth.current()
        return orchestrator_pb2.UpdateGraphLimitsResponse(status=status, resumed=changed.resumed)

    @guard
    async def ListGraphs(
        self, request: orchestrator_pb2.ListGraphsRequest, context: Ctx
    ) -> orchestrator_pb2.ListGraphsResponse:
        """Runs newest first, across every shard and, with a history database, the archive
        (dago.history.listing): the caller's namespace's, or, for an operator, the one it
        names or every namespace's."""
        size = request.page_size or 50
        if not 1 <= size <= 1000:
            raise errors.invalid_field("page_size", "must be between 1 and 1000")
        scope = queries.listed_namespace(request, self._auth.current(), self._operator())
        f = queries.run_filter(request, scope)
        page = await self._listing.page(f, queries.page_cursor(request.page_token, f), size)
        return orchestrator_pb2.ListGraphsResponse(
            graphs=page.runs, next_page_token=queries.page_token(page.next, f)
        )

    @guard
    async def GetUsageSummary(
        self, request: orchestrator_pb2.GetUsageSummaryRequest, context: Ctx
    ) -> orchestrator_pb2.GetUsageSummaryResponse:
        """Usage of the archived runs of a range (dago.history.usage): the caller's
        namespace, or every namespace for an operator."""
        scope = None if self._operator() else self._auth.current()
        query = queries.usage_query(request, scope)
        if self._usage is None:
            raise errors.failed_precondition(
                "HISTORY_DISABLED",
                "postgres_url",
                "usage summaries are computed over the run history in PostgreSQL, which this "
                "deployment does not keep: set DAGO_POSTGRES_URL (docs/history.md)",
            )
        return await self._usage.summary(query)

    def _operator(self) -> bool:
        """Whether the caller sees every namespace's operations data (authentication off,
        or a namespace of DAGO_OPERATOR_NAMESPACES)."""
        return not self._auth.enabled or self._auth.current() in self._operators

    # Yields bytes, not messages: registered without a response serializer (see
    # dago.api.server.register), since a graph's events are encoded once for all watchers.
    @guard_stream
    async def WatchGraph(
        self, request: orchestrator_pb2.WatchGraphRequest, context: Ctx
    ) -> AsyncIterator[bytes]:
        """Replay from the cursor, then follow; ends after the terminal event. Yields each
        ``WatchGraphResponse`` serialized (the watchers of a graph share them)."""
        if request.after_seq < 0:
            raise errors.invalid_field("after_seq", "must not be negative")
        async for raw in self._events(
            request.graph_id, request.after_seq, request.batch, request.item_events
        ):
            yield raw

    async def _events(
        self, graph_id: str, after: int, batch: bool, item_events: bool = False
    ) -> AsyncIterator[bytes]:
        """A graph's serialized ``WatchGraphResponse`` messages after ``after`` (see
        WatchGraph); in batch mode each message carries one hub batch (or a part of it).
        Map items' events only with ``item_events`` (their maps' map_progress always)."""
        shard = self._shard(graph_id)

        async def check(count: int) -> Entries | None:
            state, seq, ns, entries = await self._hub.head(shard, graph_id, after, count)
            if state is None:
                await self._hub.forget(shard, graph_id)
                raise _NotInRedis
            self._owned(graph_id, ns)
            if int(state) in TERMINAL_STATES and after >= int(seq or 0):
                return None
            return entries

        try:
            async for events in self._hub.watch(shard, graph_id, after, check, item_events):
                if batch:
                    for message in batched(events):
                        yield message
                else:
                    for raw in events:
                        yield raw
        except _NotInRedis:
            # Raised by check, which runs before anything is sent: the archive replays all.
            async for message in self._archive.watch(graph_id, after, batch):
                yield message

    @guard
    async def ListGraphEvents(
        self, request: orchestrator_pb2.ListGraphEventsRequest, context: Ctx
    ) -> orchestrator_pb2.ListGraphEventsResponse:
        """A page of the stored event log."""
        shard = self._shard(request.graph_id)
        size = request.page_size or 100
        if not 1 <= size <= 1000:
            raise errors.invalid_field("page_size", "must be between 1 and 1000")
        after = request.after_seq
        if request.page_token:
            after = tokens.decode_int(tokens.decode(request.page_token, "e", 1)[0])
        if after < 0:
            raise errors.invalid_field("after_seq", "must not be negative")
        state, ns = await self._store.graph_fields(
            shard, request.graph_id, Meta.STATE, Meta.NAMESPACE
        )
        # Decoded one by one as the page fills: it ends before it passes its bytes.
        events: Iterable[execution_pb2.Event]
        if state is None:
            archived = await self._archive.events(request.graph_id, after, size)
            events, found = archived, len(archived)
        else:
            self._owned(request.graph_id, ns)
            page = await self._store.events(shard, request.graph_id, after, size)
            events = (decode(request.graph_id, seq, stored) for seq, stored in page)
            found = len(page)
        resp = orchestrator_pb2.ListGraphEventsResponse()
        room = min(PAGE_BYTES, self._settings.max_message_bytes // 2)
        for event in events:
            room -= event.ByteSize()
            if room < 0 and resp.events:
                break  # a page ends before it would pass PAGE_BYTES (one event at least)
            resp.events.append(event)
        if resp.events and (len(resp.events) < found or found == size):
            resp.next_page_token = tokens.encode("e", resp.events[-1].seq)
        return resp

    @guard
    async def ListNodeAttempts(
        self, request: orchestrator_pb2.ListNodeAttemptsRequest, context: Ctx
    ) -> orchestrator_pb2.ListNodeAttemptsResponse:
        """A page of one node's attempts with their inputs and outputs."""
        shard = self._shard(request.graph_id)
        size = request.page_size or 100
        if not 1 <= size <= 1000:
            raise errors.invalid_field("page_size", "must be between 1 and 1000")
        after = RecordId(0, 0, 0)
        if request.page_token:
            parts = tokens.decode(request.page_token, "a", 3)
            after = RecordId(*(tokens.decode_int(x) for x in parts))
        raw_def, ns = await self._store.graph_fields(
            shard, request.graph_id, Meta.DEFINITION, Meta.NAMESPACE
        )
        later: Iterable[execution_pb2.Attempt]
        if raw_def is None:
            archived = await self._archive.attempts(request.graph_id, request.node_id)
            kept = [a for a in archived if RecordId(a.iteration, a.attempt, a.execution) > after]
            later, found = kept[:size], len(kept)
        else:
            self._owned(request.graph_id, ns)
            if request.node_id not in {n.id for n in graph_pb2.Graph.FromString(raw_def).nodes}:
                raise errors.not_found("node", f"{request.graph_id}/{request.node_id}")
            # The running execution first: if it ends meanwhile, its record is read next.
            running = await self._store.node_fields(
                shard, request.graph_id, request.node_id, *RUNNING_FIELDS
            )
            records = await self._store.node_records(shard, request.graph_id, request.node_id)
            recs = [(r, rec) for r, rec in executions(records, running) if r > after]
            later, found = (attempt(r, rec, True) for r, rec in recs[:size]), len(recs)
        resp = orchestrator_pb2.ListNodeAttemptsResponse()
        room = min(PAGE_BYTES, self._settings.max_message_bytes // 2)
        for a in later:
            room -= a.ByteSize()
            if room < 0 and resp.attempts:
                break
            resp.attempts.append(a)
        if len(resp.attempts) < found:
            last = resp.attempts[-1]
            resp.next_page_token = tokens.encode("a", last.iteration, last.attempt, last.execution)
        return resp

    @guard
    async def ListMapItems(
        self, request: orchestrator_pb2.ListMapItemsRequest, context: Ctx
    ) -> orchestrator_pb2.ListMapItemsResponse:
        """A page of a map node's items by index, optionally of one state, with its counts.
        A page reads MAP_SCAN_ITEMS items at most: with a state filter it may hold fewer
        items than asked (none, even) and still have a next page."""
        graph_id, node_id = request.graph_id, request.node_id
        shard = self._shard(graph_id)
        size = request.page_size or 100
        if not 1 <= size <= 1000:
            raise errors.invalid_field("page_size", "must be between 1 and 1000")
        start = 0
        if request.page_token:
            start = tokens.decode_int(tokens.decode(request.page_token, "m", 1)[0], 0, 2**31)
        raw_def, ns, raw_state = await self._store.graph_fields(
            shard, graph_id, Meta.DEFINITION, Meta.NAMESPACE, Meta.STATE
        )
        if raw_def is None:
            raise errors.not_found("graph", graph_id)
        self._owned(graph_id, ns)
        node = next((n for n in graph_pb2.Graph.FromString(raw_def).nodes if n.id == node_id), None)
        if node is None:
            raise errors.not_found("node", f"{graph_id}/{node_id}")
        if not node.HasField("map"):
            raise errors.invalid_field("node_id", f"node {node_id} is not a map node")
        counts = await self._store.node_fields(shard, graph_id, node_id, *MAP_FIELDS)
        ended = int(raw_state or 0) in TERMINAL_STATES
        resp = orchestrator_pb2.ListMapItemsResponse()
        map_progress(counts, ended, resp.progress)
        total, dispatched = resp.progress.total, int(counts[1] or 0)
        room = min(PAGE_BYTES, self._settings.max_message_bytes // 2)
        i, full = start, False
        # A state filter that matches few items would read the whole map (up to 100,000
        # items, ~1 s) per call: a page reads MAP_SCAN_ITEMS at most, then ends (maybe
        # short, or empty) with a token that goes on from there.
        while i < total and not full and i - start < MAP_SCAN_ITEMS:
            chunk = range(i, min(total, i + max(size, 500)))
            rows = await self._store.item_fields(shard, graph_id, node_id, chunk, ITEM_FIELDS)
            for index, row in zip(chunk, rows, strict=True):
                state = item_state(row[0], index < dispatched, ended)
                if request.state and state != request.state:
                    continue
                item = map_item(index, state, row)
                room -= item.ByteSize()
                if len(resp.items) >= size or (room < 0 and resp.items):
                    full = True
                    break
                resp.items.append(item)
            i = chunk[-1] + 1
        if full:
            resp.next_page_token = tokens.encode("m", resp.items[-1].index + 1)
        elif i < total:  # the scan budget ran out first
            resp.next_page_token = tokens.encode("m", i)
        return resp

    # --- operations: workers and dead letters ------------------------------------------

    @guard
    async def ListWorkers(
        self, request: orchestrator_pb2.ListWorkersRequest, context: Ctx
    ) -> orchestrator_pb2.ListWorkersResponse:
        """Workers with a heartbeat within DAGO_WORKER_TTL_MS. A tenant (a namespace not in
        DAGO_OPERATOR_NAMESPACES, with authentication on) sees each worker's slots, node kinds
        and times, under a name that is its place in the list: not its host, pid, id or
        metrics port (what an attacker maps a network with), nor its attempts in flight
        (other tenants' activity)."""
        since = int(time.time() * 1000) - self._settings.worker_ttl_ms
        resp = orchestrator_pb2.ListWorkersResponse()
        operator = self._operator()
        for n, (wid, seen_ms, raw) in enumerate(await self._store.workers(since), 1):
            info = json.loads(raw)
            w = resp.workers.add(
                worker_id=wid if operator else f"worker-{n}",
                slots=int(info.get("slots", 0)),
                node_kinds=[str(k) for k in info.get("kinds", [])],
            )
            if operator:
                w.host = str(info.get("host", ""))
                w.pid = int(info.get("pid", 0))
                w.in_flight = int(info.get("in_flight", 0))
                w.metrics_port = int(info.get("metrics_port", 0))
            w.start_time.FromMilliseconds(int(info.get("started_ms", 0)))
            w.last_heartbeat_time.FromMilliseconds(seen_ms)
        return resp

    @guard
    async def GetLimits(
        self, request: orchestrator_pb2.GetLimitsRequest, context: Ctx
    ) -> orchestrator_pb2.GetLimitsResponse:
        """Each model limit of DAGO_RATE_LIMITS with its bucket's level now (read by the
        ``ratelimit`` function, which brings it up to date; one call per model, each in its
        own slot). A provider's ``*`` entry has no bucket of its own: it shows full. Then the
        caller's namespace: its share, caps and use of them (never another namespace's)."""
        resp = orchestrator_pb2.GetLimitsResponse()
        limits = parse_rate_limits(self._settings.rate_limits)
        models = [name.partition("/")[::2] for name in sorted(limits)]
        buckets = await asyncio.gather(
            *(
                self._store.rate_limit(p, m, rate_limit_args(limits[f"{p}/{m}"], RateOp.READ))
                for p, m in models
            )
        )
        for (provider, model), bucket in zip(models, buckets, strict=True):
            limit = limits[f"{provider}/{model}"]
            m = resp.models.add(
                provider=provider,
                model=model,
                requests_per_minute=limit.requests_per_minute,
                input_tokens_per_minute=limit.input_tokens_per_minute,
                output_tokens_per_minute=limit.output_tokens_per_minute,
                burst_seconds=limit.burst_seconds,
                requests_available=bucket.requests,
                input_tokens_available=bucket.input_tokens,
                output_tokens_available=bucket.output_tokens,
            )
            if bucket.paused_until_ms > time.time() * 1000:
                m.paused_until.FromMilliseconds(bucket.paused_until_ms)
        resp.namespace.CopyFrom(await self._quotas.usage(self._auth.current()))
        resp.operator = self._operator()
        return resp

    def _dead_letter_id(self, dead_letter_id: str) -> tuple[int, str]:
        """(shard, stream entry id) of a dead letter id: INVALID_ARGUMENT when it is empty,
        too long or names a stream entry Redis cannot hold (a part over 2**64-1), NOT_FOUND
        when it is not one of this deployment's ids (as for an id that never existed)."""
        if not dead_letter_id:
            raise errors.invalid_field("dead_letter_id", "is required")
        if len(dead_letter_id) > MAX_ID_CHARS:
            raise errors.invalid_field(
                "dead_letter_id", f"is not a dead letter id (over {MAX_ID_CHARS} characters)"
            )
        m = _DEAD_ID.fullmatch(dead_letter_id)
        if m and not all(int(part) < 2**64 for part in (m[2], m[3])):
            raise errors.invalid_field(
                "dead_letter_id",
                "is not a dead letter id: <shard>-<ms>-<seq>, each number below 2**64",
            )
        if not m or int(m[1]) >= self._settings.shards:
            raise errors.not_found("dead letter", dead_letter_id)
        return int(m[1]), f"{m[2]}-{m[3]}"

    @guard
    async def ListDeadLetters(
        self, request: orchestrator_pb2.ListDeadLettersRequest, context: Ctx
    ) -> orchestrator_pb2.ListDeadLettersResponse:
        """Dead letters of every shard (or of one graph), newest first."""
        size = request.page_size or 50
        if not 1 <= size <= 1000:
            raise errors.invalid_field("page_size", "must be between 1 and 1000")
        shards = list(range(self._settings.shards))
        if request.graph_id:
            shards = [self._shard(request.graph_id)]
        cursor: tuple[int, int, int] | None = None  # (ms, seq, shard) of the last entry sent
        if request.page_token:
            ms, seq, last = tokens.decode(request.page_token, "d", 3)
            cursor = (
                tokens.decode_int(ms),
                tokens.decode_int(seq),
                tokens.decode_int(last, high=self._settings.shards - 1),
            )
        found: list[tuple[tuple[int, int, int], DeadLetterEntry]] = []
        for shard in shards:
            before = f"{cursor[0]}-{cursor[1]}" if cursor else None
            # Entries with the cursor's id on other shards may remain: read one page past it.
            for entry in await self._visible_dead_letters(shard, before, size + 1):
                ms_, seq_ = (int(x) for x in entry.entry_id.split("-"))
                key = (ms_, seq_, shard)
                if cursor is not None and key >= cursor:
                    continue
                if request.graph_id and entry.graph_id != request.graph_id:
                    continue
                found.append((key, entry))
        found.sort(key=lambda kv: kv[0], reverse=True)
        page = found[:size]
        resp = orchestrator_pb2.ListDeadLettersResponse()
        for (_, _, shard), e in page:
            state, waited = await self._store.node_fields(
                shard, e.graph_id, e.node, Node.STATE, Node.DEAD_LETTER
            )
            d = resp.dead_letters.add(
                dead_letter_id=f"{shard}-{e.entry_id}",
                graph_id=e.graph_id,
                node_id=e.node,
                attempt=e.attempt,
                iteration=e.iteration,
                deliveries=e.deliveries,
                current=state is not None
                and int(state) == execution_pb2.NODE_STATE_DEAD_LETTERED
                and waited is not None
                and waited.decode() == e.entry_id,
            )
            error_from(json.loads(e.error or b"null"), d.error)
            d.create_time.FromMilliseconds(e.time_ms)
        if len(found) > size:
            resp.next_page_token = tokens.encode("d", *page[-1][0])
        return resp

    @guard
    async def RequeueDeadLetter(
        self, request: orchestrator_pb2.RequeueDeadLetterRequest, context: Ctx
    ) -> orchestrator_pb2.RequeueDeadLetterResponse:
        """Run the dead-lettered attempt again, if its node still waits for it."""
        shard, entry_id = self._dead_letter_id(request.dead_letter_id)
        await self._check_dead_letter(shard, entry_id, request.dead_letter_id)
        outcome, gid = await self._store.dead_letter(shard, "requeue", entry_id)
        if outcome == "missing":
            raise errors.not_found("dead letter", request.dead_letter_id)
        if outcome == "stale":
            raise errors.failed_precondition(
                "DEAD_LETTER_STALE",
                request.dead_letter_id,
                f"graph {gid} finished or its node moved on since this work item was "
                "dead-lettered; there is nothing to run (drop the dead letter)",
            )
        log.info(
            "dead letter requeued",
            extra={"graph_id": gid, "dead_letter_id": request.dead_letter_id},
        )
        return orchestrator_pb2.RequeueDeadLetterResponse(graph_id=gid)

    @guard
    async def DropDeadLetter(
        self, request: orchestrator_pb2.DropDeadLetterRequest, context: Ctx
    ) -> orchestrator_pb2.DropDeadLetterResponse:
        """Remove a dead letter; a node still waiting for it fails, and so its graph."""
        shard, entry_id = self._dead_letter_id(request.dead_letter_id)
        await self._check_dead_letter(shard, entry_id, request.dead_letter_id)
        outcome, gid = await self._store.dead_letter(shard, "drop", entry_id)
        if outcome == "missing":
            raise errors.not_found("dead letter", request.dead_letter_id)
        log.info(
            "dead letter dropped",
            extra={"graph_id": gid, "dead_letter_id": request.dead_letter_id},
        )
        return orchestrator_pb2.DropDeadLetterResponse(failed_node=outcome == "failed")

    # --- waits and signals ------------------------------------------------------------

    @guard
    async def SignalGraph(
        self, request: orchestrator_pb2.SignalGraphRequest, context: Ctx
    ) -> orchestrator_pb2.SignalGraphResponse:
        """Record a decision for a waiting wait node (docs/semantics.md, "Waits and
        signals"): checked here against the node's definition, decided atomically in Redis
        (``signal.lua``)."""
        try:
            resp = await self._signal(request)
        except errors.ApiError as e:
            self._count_signal(_SIGNAL_OUTCOMES.get(e.code, "refused"))
            raise
        return resp

    def _count_signal(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.signals.labels(outcome).inc()

    async def _signal(
        self, request: orchestrator_pb2.SignalGraphRequest
    ) -> orchestrator_pb2.SignalGraphResponse:
        shard = self._shard(request.graph_id)
        gid, nid = request.graph_id, request.node_id
        if not nid:
            raise errors.invalid_field("node_id", "is required")
        if len(nid) > MAX_ID_CHARS:
            raise errors.not_found("node", f"{gid}/{nid}")
        if len(request.signal_id) > 128 or not request.signal_id.isprintable():
            raise errors.invalid_field("signal_id", "use at most 128 printable characters")
        if len(request.comment) > MAX_COMMENT_CHARS:
            raise errors.invalid_field("comment", f"use at most {MAX_COMMENT_CHARS} characters")
        if request.iteration < 0:
            raise errors.invalid_field("iteration", "must be 0 (the current one) or more")
        ns, state = await self._store.graph_fields(shard, gid, Meta.NAMESPACE, Meta.STATE)
        # A graph expired from Redis may still be in the compile cache: its namespace is
        # gone with it, and must not read as the default namespace's (a default key would
        # learn another tenant's nodes and decisions from the checks below).
        loaded = await self._graphs.get(shard, gid) if state is not None else None
        if loaded is None:
            raise errors.not_found("graph", gid)
        self._owned(gid, ns)
        node = loaded.compiled.nodes.get(nid) if loaded.compiled is not None else None
        if node is None:
            raise errors.not_found("node", f"{gid}/{nid}")
        approvals = node.kind == "agent" and bool(node.proto.agent.approval_required_tools)
        if node.kind != "wait" and not approvals:
            raise errors.invalid_field(
                "node_id",
                f"node {nid!r} is a {node.kind} node; only wait nodes and agent nodes with "
                "approval_required_tools take signals",
            )
        if len(request.tool_call_id) > 256:
            raise errors.invalid_field("tool_call_id", "use at most 256 characters")
        bad = first_non_finite(request.payload, "payload")
        if bad is not None:
            raise errors.invalid_field(bad, NOT_FINITE)
        payload = to_plain(request.payload) if request.HasField("payload") else None
        payload_json = dumps(payload) if request.HasField("payload") else ""
        sid = request.signal_id or f"s-{uuid.uuid4().hex}"
        args = SignalArgs(
            gid,
            nid,
            request.iteration,
            request.decision,
            payload_json,
            self._auth.actor(),
            sid,
            request.comment,
        )
        if approvals:
            problem, step = await self._approval_problem(shard, request, payload)
            args = args._replace(step=step)
        else:  # a wait node waits once per iteration: tool_call_id is not for it (ignored)
            problem = await self._signal_problem(node.proto.wait, request, payload)
        if problem is None and len(payload_json) > self._settings.max_event_bytes // 2:
            problem = (
                "payload",
                f"use at most {self._settings.max_event_bytes // 2} bytes of JSON "
                "(half of DAGO_MAX_EVENT_BYTES)",
            )
        if problem is not None:
            # A wait already decided (or a run that ended) tells the client it lost, whatever
            # it sent: the check costs a call only for a signal that is refused anyway.
            res = await self._store.signal(shard, args._replace(probe=1))
            if res.outcome in ("replay", "ended", "conflict", "missing"):
                return self._signalled(gid, nid, request, res)
            raise errors.invalid_field(*problem)
        res = await self._store.signal(shard, args)
        return self._signalled(gid, nid, request, res)

    async def _signal_problem(
        self,
        spec: graph_pb2.WaitNode,
        request: orchestrator_pb2.SignalGraphRequest,
        payload: Any,
    ) -> tuple[str, str] | None:
        """The field violation of a signal's decision or payload (checked against the wait's
        definition), or None."""
        allowed = decisions_of(spec)
        if request.decision not in allowed:
            return (
                "decision",
                f"{clip(request.decision)!r} is not a decision of node {request.node_id!r} "
                "(its decisions: " + ", ".join(allowed) + ")",
            )
        # On the compile thread: a schema's patterns may be slow, and the event loop serves
        # every other call.
        problem = (
            await self._graphs.offload(payload_problem, spec, payload)
            if spec.payload_schema
            else None
        )
        if problem:
            return "payload", problem
        return None

    async def _approval_problem(
        self, shard: int, request: orchestrator_pb2.SignalGraphRequest, payload: Any
    ) -> tuple[tuple[str, str] | None, str]:
        """The field violation of a decision on an agent's tool call (docs/semantics.md,
        "Approval of agent tool calls"), and the call it is for: the one named, else the one
        the node waits on now (read with its wait for an ``edit``, whose payload is checked
        against the tool's input schema kept in the wait; the signal function then refuses
        the decision if the node moved on to another call)."""
        if request.decision not in AGENT_DECISIONS:
            return (
                "decision",
                f"{clip(request.decision)!r} is not a decision of a tool call's approval (its "
                "decisions: " + ", ".join(AGENT_DECISIONS) + ")",
            ), request.tool_call_id
        if request.decision != "edit":
            return None, request.tool_call_id
        ((raw, _),) = await self._store.wait_details([(shard, request.graph_id, request.node_id)])
        if raw is None:  # not waiting: the signal function says why
            return None, request.tool_call_id
        w = json.loads(raw)
        step = str(w.get(StoredWait.STEP) or "")
        if request.tool_call_id and request.tool_call_id != step:
            return None, request.tool_call_id
        schema = json.loads(w[StoredWait.SCHEMA]) if w.get(StoredWait.SCHEMA) else None
        problem = await self._graphs.offload(edited_arguments_problem, schema, payload)
        return (("payload", problem) if problem else None), step

    def _signalled(
        self,
        gid: str,
        nid: str,
        request: orchestrator_pb2.SignalGraphRequest,
        res: Signalled,
    ) -> orchestrator_pb2.SignalGraphResponse:
        """The answer to a signal from what ``signal`` decided."""
        subject = f"{gid}/{nid}"
        if res.outcome == "missing":
            raise errors.not_found("graph", gid)
        if res.outcome == "ended":
            name = _STATE_NAMES[execution_pb2.GraphState.ValueType(res.state)]
            decided = ""
            if res.record is not None:
                w = _winner(res.record)
                decided = f" (its last decision: {w['decision']!r} by {w['actor']!r})"
            raise errors.failed_precondition(
                "GRAPH_FINISHED",
                subject,
                f"graph {gid} already finished ({name}); node {nid} takes no more signals{decided}",
            )
        if res.outcome == "not_waiting":
            state = execution_pb2.NodeState.Name(execution_pb2.NodeState.ValueType(res.state))
            asked = f" in iteration {request.iteration}" if request.iteration else ""
            raise errors.failed_precondition(
                "NODE_NOT_WAITING",
                subject,
                f"node {nid} of graph {gid} is not waiting for a signal{asked}: it is "
                f"{state.removeprefix('NODE_STATE_')} (iteration {res.iteration})",
            )
        rec = res.record or {}
        if res.outcome == "conflict":
            winner = _winner(rec)
            raise errors.signal_conflict(
                subject,
                f"node {nid} of graph {gid} was already decided in iteration "
                f"{winner['iteration']}: {winner['decision']!r} by {winner['actor']!r}",
                winner,
            )
        self._count_signal("recorded" if res.outcome == "recorded" else "replayed")
        resp = orchestrator_pb2.SignalGraphResponse(
            graph_id=gid,
            node_id=nid,
            iteration=int(rec.get(Decision.ITERATION, 0)),
            decision=str(rec.get(Decision.DECISION, "")),
            actor=str(rec.get(Decision.ACTOR, "")),
            signal_id=str(rec.get(Decision.SIGNAL_ID, "")),
        )
        resp.signal_time.FromMilliseconds(int(rec.get(Decision.AT, 0)))
        if res.outcome == "recorded":
            log.info(
                "signal recorded",
                extra={"graph_id": gid, "node_id": nid, "decision": resp.decision},
            )
        return resp

    @guard
    async def ListWaits(
        self, request: orchestrator_pb2.ListWaitsRequest, context: Ctx
    ) -> orchestrator_pb2.ListWaitsResponse:
        """The caller's namespace's waiting nodes over every shard, oldest first: each shard's
        inbox is read from the cursor and the pages merged by (since, graph id, node)."""
        size = request.page_size or 50
        if not 1 <= size <= 1000:
            raise errors.invalid_field("page_size", "must be between 1 and 1000")
        since, after = 0, ""
        if request.page_token:
            ms, after = tokens.decode(request.page_token, "w", 2)
            since = tokens.decode_int(ms) if ms != "0" else 0
        if request.graph_id:
            return await self._run_waits(request.graph_id, since, after, size)
        ns = self._auth.current()
        pages = await asyncio.gather(
            *(
                self._store.waits_after(shard, ns, since, after, size + 1)
                for shard in range(self._settings.shards)
            )
        )
        found = [(ms, m, shard) for shard, rows in enumerate(pages) for ms, m in rows]
        found.sort()
        page = found[:size]
        resp = orchestrator_pb2.ListWaitsResponse()
        keys: list[tuple[int, str, str]] = []
        for _, member, shard in page:
            gid, _, nid = member.partition("|")
            keys.append((shard, gid, nid))
        details = await self._store.wait_details(keys) if keys else []
        for (_, gid, nid), (raw, name) in zip(keys, details, strict=True):
            if raw is None:  # decided since the index was read
                continue
            resp.waits.append(wait_view(gid, nid, raw, name))
        if len(found) > size:
            last_ms, last_member, _ = page[-1]
            resp.next_page_token = tokens.encode("w", last_ms, last_member)
        return resp

    async def _run_waits(
        self, gid: str, since: int, after: str, size: int
    ) -> orchestrator_pb2.ListWaitsResponse:
        """ListWaits of one run: the stored waits of its nodes that may wait, read in one
        round trip (no scan of the namespace's inbox), in the inbox's order and paging."""
        if len(gid) > MAX_ID_CHARS:
            raise errors.not_found("graph", gid)
        shard = self._shard(gid)
        ns, state = await self._store.graph_fields(shard, gid, Meta.NAMESPACE, Meta.STATE)
        # Not from the compile cache alone: it may hold a graph Redis let go (see _signal).
        loaded = await self._graphs.get(shard, gid) if state is not None else None
        if loaded is None or loaded.compiled is None:
            # Finished and archived (no waits), or unknown (NOT_FOUND).
            await self._archive.status(gid, False)
            return orchestrator_pb2.ListWaitsResponse()
        self._owned(gid, ns)
        nodes = sorted(n.id for n in loaded.compiled.nodes.values() if n.waits)
        details = await self._store.wait_details([(shard, gid, n) for n in nodes])
        found = sorted(
            (_wait_since(raw), f"{gid}|{nid}", nid, raw, name)
            for nid, (raw, name) in zip(nodes, details, strict=True)
            if raw is not None
        )
        found = [f for f in found if f[0] > since or (f[0] == since and f[1] > after)]
        resp = orchestrator_pb2.ListWaitsResponse()
        for _, _, nid, raw, name in found[:size]:
            resp.waits.append(wait_view(gid, nid, raw, name))
        if len(found) > size:
            last_ms, last_member = found[size - 1][:2]
            resp.next_page_token = tokens.encode("w", last_ms, last_member)
        return resp


def _wait_since(raw: bytes) -> int:
    return int(json.loads(raw).get(StoredWait.SINCE, 0))


def _winner(rec: dict[str, Any]) -> dict[str, str]:
    """The ErrorInfo metadata naming a recorded decision (``schema.Decision``)."""
    return {
        "decision": str(rec.get(Decision.DECISION, "")),
        "actor": str(rec.get(Decision.ACTOR, "")),
        "signal_id": str(rec.get(Decision.SIGNAL_ID, "")),
        "iteration": str(rec.get(Decision.ITERATION, "")),
        "timed_out": "true" if rec.get(Decision.TIMED_OUT) else "false",
    }


_SIGNAL_OUTCOMES = {
    grpc.StatusCode.ABORTED: "conflict",
    grpc.StatusCode.FAILED_PRECONDITION: "not_waiting",
    grpc.StatusCode.INVALID_ARGUMENT: "invalid",
    grpc.StatusCode.NOT_FOUND: "not_found",
}
"""The ``dago_signals_total`` outcome of a refused signal, by its status code."""

MAX_COMMENT_CHARS = 4096
"""Longest comment a signal may carry."""


def wait_view(gid: str, nid: str, raw: bytes, name: bytes | None) -> orchestrator_pb2.Wait:
    """A ``Wait`` from a node's stored wait (``schema.Wait``)."""
    out = orchestrator_pb2.Wait(graph_id=gid, graph_name=name.decode() if name else "", node_id=nid)
    fill_wait(out, raw)
    return out


class _NotInRedis(Exception):
    """Redis holds no run by the id watched (the archive may)."""


_DEAD_ID = re.compile(r"([0-9]{1,4})-([0-9]{1,20})-([0-9]{1,20})")
"""``<shard>-<stream entry id>`` (fullmatch; ASCII digits: ``\\d`` takes any script's)."""

MAP_SCAN_ITEMS = 5000
"""Map items one ListMapItems page reads at most (when a state filter skips most)."""

DEAD_LETTER_BATCH = 500
"""Dead letters read per round trip while a listing skips other namespaces' entries."""

MAX_ID_CHARS = 64
"""Longest graph or dead letter id looked up; a longer one is INVALID_ARGUMENT (ours are at
most 31 and 46 characters), so no error message echoes a client's megabytes."""


@dataclass
class _Fork:
    """What ForkGraph hands to the submit path: the source run and its node fields, the
    re-run request, and (set by the submit path once the patched graph compiled) the plan."""

    source: str
    nodes: dict[bytes, bytes]
    items: dict[str, list[fork_rules.Item]] | None
    """The source's completed map items when it came from the history (``ForkSource``)."""
    from_nodes: list[str]
    dry_run: bool
    patched: list[str]
    digest: str
    plan: fork_rules.Plan | None = None
    failed_only: bool = False


PAGE_BYTES = 1 << 20
"""A page of events or attempts ends before it would pass this many bytes (or half of
DAGO_MAX_MESSAGE_BYTES when that is less)."""


def _prepare(
    request: orchestrator_pb2.SubmitGraphRequest | orchestrator_pb2.RunGraphRequest,
    max_inputs_bytes: int,
) -> tuple[dict[str, Any], bytes, bytes]:
    """The request's inputs as plain values and as stored JSON, and the definition as stored
    (its deterministic encoding: also the key of the compile cache). Runs on the compile
    thread; GraphInvalid for inputs over ``max_inputs_bytes`` or holding NaN or Infinity."""
    bad = first_non_finite(request.inputs, "inputs")
    if bad is not None:
        raise GraphInvalid([Violation(bad, NOT_FINITE)])
    inputs = to_plain(request.inputs)
    raw_inputs = dumps(inputs).encode()
    if len(raw_inputs) > max_inputs_bytes:
        raise GraphInvalid(
            [
                Violation(
                    "inputs",
                    f"is {len(raw_inputs)} bytes as JSON; the limit is {max_inputs_bytes} "
                    "(DAGO_MAX_INPUTS_BYTES): pass large data by reference (a URL or an id)",
                )
            ]
        )
    return inputs, raw_inputs, request.graph.SerializeToString(deterministic=True)


def _body_digest(
    request: orchestrator_pb2.SubmitGraphRequest | orchestrator_pb2.RunGraphRequest,
) -> str:
    """What makes two submissions with one request_id the same request (the graph and the
    inputs: a RunGraph and a SubmitGraph of them name the same run)."""
    body = orchestrator_pb2.SubmitGraphRequest()
    body.graph.CopyFrom(request.graph)
    body.inputs.CopyFrom(request.inputs)
    if isinstance(request, orchestrator_pb2.SubmitGraphRequest):
        # A run by reference is the same request when it names the same reference (a label
        # moved since still returns the first run).
        body.definition = request.definition
        body.allow_deprecated = request.allow_deprecated
    return hashlib.sha256(body.SerializeToString(deterministic=True)).hexdigest()


def _stable_shard(key: str, shards: int) -> int:
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:4], "big") % shards
