"""``dago worker``: runs node attempts from the work streams.

Flow per batch: read work (XREADGROUP COUNT>1 BLOCK), mark the batch running
in one Lua call per shard (which also returns the outputs the nodes read),
run each attempt, and apply finished attempts in batches with one Lua call
per shard that records the result, resolves edges, dispatches successors and
acks the work item. A work item is acked only by that call, so a worker
killed at any point loses nothing: its items are reclaimed after the lease.

An attempt runs in its own task, except when its handler can run it without
waiting (the built-in ``echo`` tool: ``Tool.inline``): then it runs right
where its batch was started, and the batch's results go to the completer
together. Attempt timeouts are enforced by one timer per worker, set for the
earliest deadline of the attempts running in tasks, which cancels the ones
past their deadline (instead of an ``asyncio.timeout`` per attempt).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from prometheus_client import CollectorRegistry
from redis.exceptions import ResponseError

from dago.api.auth import Redactor
from dago.config import Settings
from dago.engine.cel import EvalError
from dago.engine.graphcache import GraphCache, LoadedGraph
from dago.engine.model import CompiledNode
from dago.engine.topology import start_reads
from dago.nodes.base import Handler, Inline, NodeContext, NodeFailure, NodeResult, invalid
from dago.observe.logs import NODE, NodeFields
from dago.observe.metrics import Metrics, serve
from dago.observe.tracing import Tracing, fail, trace_id_of
from dago.store.store import STORE_ERRORS, Store, WorkItem, raise_if_cancelling
from dago.store.values import dumps
from dago.v1 import graph_pb2

log = logging.getLogger("dago.worker")

_NO_DEADLINE = float("inf")


@dataclass(slots=True, eq=False)
class _Running:
    """An attempt started and not yet applied."""

    item: WorkItem
    task: asyncio.Task[None] | None = None
    """None for an attempt run inline (it finished as it started)."""
    stopped_by_control: bool = False
    deadline: float = _NO_DEADLINE
    """Loop time past which the attempt times out, while its handler runs in ``task``."""
    timed_out: bool = False
    reported: bool = False
    """Its result went to the completer."""


@dataclass(slots=True, eq=False)
class _Plan:
    """What every attempt of one compiled node needs, worked out once per worker."""

    node: CompiledNode
    need_inputs: str
    refs: str
    backstop_ms: int
    inline: Inline | None
    """The handler's synchronous form for this node, if it has one."""
    static_input: str | None
    """The JSON of the node's input when its template has no placeholder."""
    edges: str | None
    """The outgoing edges taken when no edge has a condition (and no route is chosen)."""


class Worker:
    """One worker process: N slots fed from every shard's work stream."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        graphs: GraphCache,
        handlers: Mapping[str, Handler],
        worker_id: str,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._graphs = graphs
        self._handlers = handlers
        # Errors, outputs and events never carry the operator's secrets (docs/security.md).
        self._redact = Redactor.from_settings(settings)
        self.id = worker_id
        self._metrics = metrics or Metrics(CollectorRegistry())
        self._tracing = tracing or Tracing("dago-worker", {})
        # Attempts started and not yet applied (free slots a blocked read holds are not busy).
        self._metrics.worker_slots(settings.worker_slots, lambda: len(self._running))
        self._running: dict[bytes, _Running] = {}
        self._free = settings.worker_slots
        self._freed = asyncio.Event()
        self._readers_waiting = 0  # readers waiting for a free slot
        # Finished attempts waiting for the completer: (shard, msg_id, complete.lua fields).
        self._finished: list[tuple[int, bytes, list[Any]]] = []
        self._have_finished = asyncio.Event()
        self._unapplied = 0  # finished and not yet applied (or given up on)
        self._all_applied = asyncio.Event()
        self._plans: dict[int, _Plan] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = _NO_DEADLINE
        self._draining = False
        shards = list(range(settings.shards))
        # One blocking read can cover every shard on a single Redis, not on a cluster.
        self._groups = [[s] for s in shards] if settings.cluster else [shards]

    @property
    def in_flight(self) -> int:
        """Attempts running or waiting to be applied."""
        return self._settings.worker_slots - self._free

    async def wait_for_redis(self) -> None:
        """Return once Redis answers, saying what it waits for meanwhile."""
        delay = 0.2
        while True:
            raise_if_cancelling()
            try:
                await self._store.ready()
                return
            except STORE_ERRORS as e:
                log.warning("waiting for Redis (%s); retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set, then drain: finish running attempts, then return."""
        stop_metrics = serve(
            self._metrics.registry, self._settings.worker_metrics_port, f"worker {self.id}"
        )
        await self.wait_for_redis()
        await self._store.ensure_groups()
        log.info("worker %s started: %d slots, shards %s", self.id, self._free, self._groups)
        async with asyncio.TaskGroup() as tg:
            feeders = [tg.create_task(self._read_loop(g)) for g in self._groups]
            feeders.append(tg.create_task(self._reclaim_loop()))
            feeders += [tg.create_task(self._control_loop(g)) for g in self._groups]
            renew = tg.create_task(self._renew_loop())
            heartbeat = tg.create_task(self._heartbeat_loop())
            completer = tg.create_task(self._complete_loop())
            warm = tg.create_task(self._warm_handlers())
            await stop.wait()
            log.info("worker %s draining %d attempts", self.id, len(self._running))
            self._draining = True
            for t in feeders:
                t.cancel()
            await asyncio.gather(*feeders, return_exceptions=True)
            while True:
                await self._drain()
                # Results of finished attempts are applied.
                while self._unapplied:
                    self._all_applied.clear()
                    await self._all_applied.wait()
                # An apply under way when draining began may have taken new items.
                if not any(r.task and not r.task.done() for r in self._running.values()):
                    break
            for t in (renew, heartbeat, completer, warm):
                t.cancel()
        if self._timer is not None:
            self._timer.cancel()
        await self._deregister()
        await self._close_handlers()
        stop_metrics()
        self._tracing.shutdown()
        await self._store.redis.aclose()  # not left to the process's exit: see ApiServer.run
        log.info("worker %s stopped", self.id)

    async def _warm_handlers(self) -> None:
        """Let handlers load what their first attempt would otherwise wait for (SDK imports)."""
        await self._each_handler("warm")

    async def _close_handlers(self) -> None:
        """Release what handlers hold open (MCP server sessions and their processes)."""
        await self._each_handler("close")

    async def _each_handler(self, method: str) -> None:
        """Await ``method()`` of every handler that has one; a failure is logged, not raised
        (the first attempt reports a failed warm-up; shutting down goes on past a failed close)."""
        for handler in {id(h): h for h in self._handlers.values()}.values():
            call = getattr(handler, method, None)
            if call is None:
                continue
            try:
                await call()
            except Exception as e:
                log.warning("%s of the %s handler failed: %s", method, type(handler).__name__, e)

    async def _drain(self) -> None:
        tasks = [r.task for r in self._running.values() if r.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self._settings.drain_timeout_s)
        for t in pending:
            # Not applied, so still pending in Redis: another worker reclaims them.
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for msg_id in [m for m, r in self._running.items() if r.task in pending]:
            del self._running[msg_id]

    # --- slots -----------------------------------------------------------------------

    async def _reserve(self, busy: bool) -> int:
        """Take up to a batch of free slots for a blocking read. The free slots are split
        between the readers and the reclaimer, so a reader waiting on a quiet shard cannot
        starve the others. A worker's only reader whose last read found work (``busy``)
        takes all but an eighth: its read likely returns at once, and larger batches cost
        fewer Redis calls per node (and fewer rounds for a wide fan-out)."""
        while self._free <= 0:
            self._freed.clear()
            self._readers_waiting += 1
            try:
                await self._freed.wait()
            finally:
                self._readers_waiting -= 1
        if busy and len(self._groups) == 1:
            share = self._free - self._free // 8
        else:
            share = max(1, self._free // (len(self._groups) + 1))
        n = min(self._settings.worker_batch, share)
        self._free -= n
        return n

    def _reserve_now(self) -> int:
        """Take whatever free slots there are (up to a batch) without waiting."""
        n = min(self._settings.worker_batch, self._free)
        self._free -= n
        return n

    def _forget(self, msg_id: bytes) -> None:
        """Drop an attempt that will not be applied and free its slot (still pending in
        Redis, it is reclaimed after the lease)."""
        if self._running.pop(msg_id, None) is not None:
            self._release(1)

    def _release(self, n: int) -> None:
        if n:
            self._free += n
            self._freed.set()

    # --- feeding ---------------------------------------------------------------------

    async def _read_loop(self, shards: list[int]) -> None:
        backoff = 0.1
        busy = False
        while True:
            raise_if_cancelling()
            n = await self._reserve(busy)
            busy = False
            try:
                items = await self._store.read_work(shards, self.id, n, block_ms=2000)
                backoff = 0.1
                busy = bool(items)
            except STORE_ERRORS as e:
                self._release(n)
                await self._recreate_groups(e)
                log.warning("reading work failed (%s); retrying in %.1fs", e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self._release(n - len(items))
            if items:
                await self._begin(items)

    async def _reclaim_loop(self) -> None:
        lease = self._settings.lease_ms
        while True:
            raise_if_cancelling()
            await asyncio.sleep(max(lease / 4000, 0.25))
            for shard in range(self._settings.shards):
                n = self._reserve_now()
                if n == 0:
                    break
                try:
                    items = await self._store.reclaim(
                        shard, self.id, lease, n, self._settings.max_deliveries
                    )
                except STORE_ERRORS as e:
                    log.warning("reclaim failed on shard %d: %s", shard, e)
                    await self._recreate_groups(e)
                    items = []
                self._release(n - len(items))
                if items:
                    log.info("reclaimed %d work items on shard %d", len(items), shard)
                    await self._begin(items)

    async def _recreate_groups(self, error: Exception) -> None:
        """A Redis that lost its data (restarted without persistence) has no consumer groups."""
        if "NOGROUP" in str(error):
            with contextlib.suppress(*STORE_ERRORS):
                await self._store.ensure_groups()

    async def _begin(self, items: Sequence[WorkItem]) -> None:
        by_shard: dict[int, list[tuple[WorkItem, LoadedGraph | None]]] = defaultdict(list)
        try:
            # One round trip for every graph of the batch this worker has not seen yet.
            loaded = await self._graphs.get_many([(it.shard, it.graph_id) for it in items])
            for item in items:
                by_shard[item.shard].append((item, loaded[item.graph_id]))
        except STORE_ERRORS as e:
            # Left pending in Redis; the reclaim loop picks them up after the lease.
            log.warning("loading graphs failed: %s", e)
            self._release(len(items))
            return
        if len(by_shard) == 1:
            for shard, batch in by_shard.items():
                await self._start(shard, batch)
        else:
            await asyncio.gather(*(self._start(shard, batch) for shard, batch in by_shard.items()))

    def _plan(self, node: CompiledNode) -> _Plan:
        """The plan of ``node`` (compiled nodes are shared and never change)."""
        plan = self._plans.get(id(node))
        if plan is not None and plan.node is node:
            return plan
        need_inputs, refs = start_reads(node)
        handler = self._handlers.get(node.kind)
        inline = getattr(handler, "inline", None)
        edges = None
        if all(e.condition is None for e in node.out_edges):
            edges = ",".join(str(e.index) for e in node.out_edges)
        plan = _Plan(
            node=node,
            need_inputs=need_inputs,
            refs=refs,
            # The Redis-held timer is a backstop for a hung worker; the local one fires first.
            backstop_ms=int(node.attempt_timeout * 1000) + self._settings.lease_ms,
            inline=inline(node) if inline is not None else None,
            static_input=dumps(node.inputs.value) if node.inputs.is_static else None,
            edges=edges,
        )
        if len(self._plans) >= 65536:  # graphs come and go; the plans of old ones with them
            self._plans.clear()
        self._plans[id(node)] = plan
        return plan

    async def _start(self, shard: int, batch: list[tuple[WorkItem, LoadedGraph | None]]) -> None:
        args: list[Any] = []
        plans: list[_Plan | None] = []
        for item, loaded in batch:
            node = _node(loaded, item)
            plan = self._plan(node) if node is not None else None
            plans.append(plan)
            args += [
                item.msg_id,
                item.graph_id,
                item.node,
                item.attempt,
                item.iteration,
                item.deliveries,
            ]
            if plan is not None:
                args += [plan.need_inputs, plan.refs, plan.backstop_ms]
            else:
                args += [
                    "0",
                    "*",
                    int(self._settings.attempt_timeout_s * 1000) + self._settings.lease_ms,
                ]
        try:
            results = await self._store.start(shard, self.id, args)
        except STORE_ERRORS as e:
            # Left pending in Redis; the reclaim loop picks them up after the lease.
            log.warning("starting %d attempts failed: %s", len(batch), e)
            self._release(len(batch))
            return
        self._launch(batch, plans, results)

    def _launch(
        self,
        batch: Sequence[tuple[WorkItem, LoadedGraph | None]],
        plans: Sequence[_Plan | None],
        results: Sequence[Any],
    ) -> None:
        """Run the attempts Redis marked running (``results`` as start.lua returns them);
        the slots of stale items are freed."""
        stale = 0
        for (item, loaded), plan, res in zip(batch, plans, results, strict=True):
            if res[0] != b"run":
                stale += 1
                continue
            inputs = json.loads(res[1]) if res[1] else {}
            outs = res[2]
            nodes = (
                {
                    outs[k].decode(): {"output": json.loads(outs[k + 1])}
                    for k in range(0, len(outs), 2)
                }
                if outs
                else {}
            )
            name = loaded.name if loaded else ""
            scope = {"inputs": inputs, "nodes": nodes, "graph": {"id": item.graph_id, "name": name}}
            running = _Running(item)
            self._running[item.msg_id] = running
            if plan is not None and plan.inline is not None and loaded is not None:
                try:
                    self._run_inline(running, loaded, plan, scope)
                except Exception:  # a bug of ours: leave the item pending for reclaim
                    log.exception("running %s/%s inline failed", item.graph_id, item.node)
                    if not running.reported:
                        self._forget(item.msg_id)
            else:
                running.task = asyncio.create_task(self._observed(running, loaded, plan, scope))
        self._release(stale)

    # --- running ---------------------------------------------------------------------

    def _span_args(self, item: WorkItem, loaded: LoadedGraph | None) -> tuple[str, dict[str, Any]]:
        """The name and attributes of an attempt's span."""
        node = _node(loaded, item)
        attrs: dict[str, Any] = {
            "dago.graph.id": item.graph_id,
            "dago.node.id": item.node,
            "dago.node.kind": node.kind if node else "unknown",
            "dago.node.attempt": item.attempt,
            "dago.node.iteration": item.iteration,
            "dago.work.deliveries": item.deliveries,
            "dago.worker.id": self.id,
        }
        if node is not None and node.kind == "tool":
            attrs["dago.tool.name"] = node.proto.tool.name
        return f"node {node.kind if node else 'unknown'}", attrs

    @contextlib.contextmanager
    def _observing(self, item: WorkItem, loaded: LoadedGraph | None) -> Iterator[None]:
        """The attempt's log fields (set for the block only) and, when tracing is on, a span
        joining the graph's trace around it."""
        tid = loaded.trace_id if loaded else ""
        token = NODE.set(NodeFields(item.graph_id, item.node, item.attempt, item.iteration, tid))
        try:
            if not self._tracing.enabled:
                yield
            else:
                name, attrs = self._span_args(item, loaded)
                tp = loaded.traceparent if loaded else ""
                with self._tracing.span(name, attrs, parent=self._tracing.extract(tp)):
                    yield
        finally:
            NODE.reset(token)

    async def _observed(
        self,
        running: _Running,
        loaded: LoadedGraph | None,
        plan: _Plan | None,
        scope: dict[str, Any],
    ) -> None:
        """Run an attempt in its task, observed (``_observing``)."""
        with self._observing(running.item, loaded):
            await self._attempt(running, loaded, plan, scope)

    def _run_inline(
        self, running: _Running, loaded: LoadedGraph, plan: _Plan, scope: dict[str, Any]
    ) -> None:
        """``_observed`` for an attempt whose handler runs it without waiting: here and now."""
        with self._observing(running.item, loaded):
            self._inline_attempt(running, plan, scope)

    def _inline_attempt(self, running: _Running, plan: _Plan, scope: dict[str, Any]) -> None:
        """``_attempt`` of an attempt run inline (``plan.inline`` is set)."""
        started = time.monotonic()
        item = running.item
        node = plan.node
        rendered = ""
        run = plan.inline
        assert run is not None
        try:
            value, rendered = _render(plan, scope)
            result = run(self._context(item, node, scope, value))
            fields = _succeeded(plan, scope, value, result)
        except NodeFailure as f:
            fields = self._failure(f, node, item)
        except Exception as e:
            fields = self._bug(e, node, item)
        self._finish(running, node, rendered, fields, started)

    def _bug(self, e: Exception, node: CompiledNode | None, item: WorkItem) -> list[Any]:
        """A tool's own bug: logged and reported as a transient failure; the worker lives on."""
        log.exception("attempt %s/%s failed unexpectedly", item.graph_id, item.node)
        bug = NodeFailure(graph_pb2.ERROR_CLASS_TRANSIENT, f"{type(e).__name__}: {e}", True)
        return self._failure(bug, node, item)

    def _observe(
        self, running: _Running, node: CompiledNode | None, fields: list[Any], started: float
    ) -> None:
        """Count and log one finished attempt; mark its span (cheap: two metric updates)."""
        seconds = time.monotonic() - started
        outcome = _OUTCOMES.get(fields[0], "failed")
        if running.stopped_by_control:
            outcome = "cancelled"
        kind = node.kind if node else "unknown"
        self._metrics.node_done(kind, outcome, seconds)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("node attempt %s in %.1f ms", outcome, seconds * 1e3)
        if self._tracing.enabled:
            span = trace.get_current_span()
            span.set_attribute("dago.node.outcome", outcome)
            if outcome != "completed":
                err = json.loads(fields[5]) if fields[5] else {}
                fail(span, outcome, str(err.get("m", "")))

    async def _attempt(
        self,
        running: _Running,
        loaded: LoadedGraph | None,
        plan: _Plan | None,
        scope: dict[str, Any],
    ) -> None:
        started = time.monotonic()
        item = running.item
        node = plan.node if plan is not None else None
        rendered = ""
        try:
            if plan is None or node is None:
                problem = loaded.problem if loaded else "the graph's definition is gone"
                raise invalid(f"cannot run node {item.node!r}: {problem}")
            value, rendered = _render(plan, scope)
            result = await self._execute(running, node, scope, value)
            fields = _succeeded(plan, scope, value, result)
        except NodeFailure as f:
            fields = self._failure(f, node, item)
        except asyncio.CancelledError:
            if not running.stopped_by_control:
                raise
            # Cancelled because the graph ended or the attempt timed out in Redis: the
            # report below is fenced out there and only acks the work item.
            fields = self._failure(invalid("cancelled"), None, item)
        except Exception as e:
            fields = self._bug(e, node, item)
        self._finish(running, node, rendered, fields, started)

    def _context(
        self, item: WorkItem, node: CompiledNode, scope: dict[str, Any], rendered: Any
    ) -> NodeContext:
        return NodeContext(
            graph_id=item.graph_id,
            node=node,
            attempt=item.attempt,
            iteration=item.iteration,
            input=rendered,
            scope=scope,
            emit=lambda events: self._store.append(item.shard, item, self._redact.events(events)),
            worker_id=self.id,
        )

    async def _execute(
        self, running: _Running, node: CompiledNode, scope: dict[str, Any], rendered: Any
    ) -> NodeResult:
        """Run the handler in this task until the attempt's timeout (see ``_expire``)."""
        handler = self._handlers.get(node.kind)
        if handler is None:
            raise invalid(f"this worker does not run {node.kind} nodes")
        ctx = self._context(running.item, node, scope, rendered)
        running.deadline = asyncio.get_running_loop().time() + node.attempt_timeout
        self._arm(running.deadline)
        try:
            result = await handler.run(ctx)
        except asyncio.CancelledError:
            running.deadline = _NO_DEADLINE
            # Like asyncio.timeout: our own cancellation becomes the timeout, one from
            # elsewhere (the control stream, a drain) goes on.
            if running.timed_out and _uncancel() == 0 and not running.stopped_by_control:
                raise _timeout(node) from None
            raise
        running.deadline = _NO_DEADLINE
        if running.timed_out:  # the handler swallowed the cancellation and returned
            _uncancel()
        return result

    # --- timeouts --------------------------------------------------------------------

    def _arm(self, deadline: float) -> None:
        """Make sure the timer fires by ``deadline``."""
        if deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = asyncio.get_running_loop().call_at(deadline, self._expire)

    def _expire(self) -> None:
        """Cancel the attempts past their deadline; set the timer for the next deadline."""
        self._timer = None
        self._timer_at = _NO_DEADLINE
        now = asyncio.get_running_loop().time()
        soonest = _NO_DEADLINE
        for r in self._running.values():
            if r.deadline <= now:
                if r.task is not None and not r.timed_out and not r.task.done():
                    r.timed_out = True
                    r.task.cancel()
            elif r.deadline < soonest:
                soonest = r.deadline
        if soonest != _NO_DEADLINE:
            self._arm(soonest)

    def _failure(self, f: NodeFailure, node: CompiledNode | None, item: WorkItem) -> list[Any]:
        usage = f.usage.to_arg() if f.usage else ""
        if node is not None:
            r = node.retry
            allowed = not r.retry_on or f.error_class in r.retry_on
            if f.retryable and allowed and item.attempt < r.max_attempts:
                delay = min(r.max_backoff, r.initial_backoff * r.multiplier ** (item.attempt - 1))
                delay *= 1 + r.jitter * (2 * random.random() - 1)
                # A downstream service that said when to come back (retry-after) is honoured.
                delay = max(delay, f.retry_after or 0.0)
                return ["retry", "", "", usage, "", f.to_json(), int(delay * 1000)]
        return ["fail", "", "", usage, "", f.to_json(), 0]

    # --- applying results ------------------------------------------------------------

    def _finish(
        self,
        running: _Running,
        node: CompiledNode | None,
        rendered: str,
        fields: list[Any],
        started: float,
    ) -> None:
        """Count a finished attempt and hand its result to the completer."""
        self._observe(running, node, fields, started)
        item = running.item
        args = [item.msg_id, item.graph_id, item.node, item.attempt, item.iteration]
        args += self._redact.fields([rendered, *fields])
        self._finished.append((item.shard, item.msg_id, args))
        running.reported = True
        self._unapplied += 1
        self._have_finished.set()

    async def _complete_loop(self) -> None:
        while True:
            raise_if_cancelling()
            if not self._finished:
                self._have_finished.clear()
                await self._have_finished.wait()
                continue
            batch = self._finished[:512]
            del self._finished[:512]
            by_shard: dict[int, list[Any]] = defaultdict(list)
            for shard, _, args in batch:
                by_shard[shard].extend(args)
            if len(by_shard) == 1:
                taken = [await self._apply(s, a) for s, a in by_shard.items()]
            else:
                taken = await asyncio.gather(*(self._apply(s, a) for s, a in by_shard.items()))
            for _, msg_id, _ in batch:  # kept until now: their leases are renewed meanwhile
                self._running.pop(msg_id, None)
            # The slots of the applied attempts went to the new items taken with them.
            self._release(len(batch) - sum(taken))
            self._unapplied -= len(batch)
            if not self._unapplied:
                self._all_applied.set()

    async def _apply(self, shard: int, args: list[Any]) -> int:
        """Apply results of one shard (13 fields each) and, unless draining, take as many new
        work items of the shard in the same step (advance.lua), each given the slot of an
        applied attempt (half as many while a reader waits for slots); returns how many
        were taken (their slots are accounted for)."""
        backoff = 0.05
        while True:
            raise_if_cancelling()
            want = 0 if self._draining else min(len(args) // 13, self._settings.worker_batch)
            if self._readers_waiting:
                # Half the slots go back to the readers, which take work of every shard:
                # a shard with a backlog cannot keep all of them.
                want //= 2
            try:
                if want:
                    _, items = await self._store.advance(
                        shard, self.id, want, self._settings.lease_ms, args
                    )
                else:
                    await self._store.complete(shard, self.id, args)
                    items = []
            except ResponseError as e:
                # Redis refused the script itself: retrying cannot help. The items stay
                # pending, are redelivered after the lease and end dead-lettered.
                log.error("applying results was refused by Redis: %s", e)
                return 0
            except STORE_ERRORS as e:
                # Keep the result and retry: the item stays pending, so nothing is lost
                # even if this process dies before Redis comes back.
                log.warning("applying results failed (%s); retrying in %.2fs", e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if items:
                await self._continue(shard, items)
            return len(items)

    async def _continue(self, shard: int, taken: list[tuple[WorkItem, list[Any]]]) -> None:
        """Run the work items advance.lua took (each holds a slot): the ones it started at
        once, the others (``read``: their graph has no start plans) through start.lua."""
        try:
            loaded = await self._graphs.get_many([(it.shard, it.graph_id) for it, _ in taken])
        except STORE_ERRORS as e:
            # Left pending in Redis; the reclaim loop picks them up after the lease.
            log.warning("loading graphs failed: %s", e)
            self._release(len(taken))
            return
        started: list[tuple[WorkItem, LoadedGraph | None]] = []
        plans: list[_Plan | None] = []
        results: list[Any] = []
        unstarted: list[tuple[WorkItem, LoadedGraph | None]] = []
        for item, res in taken:
            graph = loaded[item.graph_id]
            if res[0] == b"read":
                unstarted.append((item, graph))
                continue
            node = _node(graph, item)
            started.append((item, graph))
            plans.append(self._plan(node) if node is not None else None)
            results.append(res)
        if started:
            self._launch(started, plans, results)
        if unstarted:
            await self._start(shard, unstarted)

    # --- leases, cancellation, presence ----------------------------------------------

    async def _renew_loop(self) -> None:
        while True:
            raise_if_cancelling()
            await asyncio.sleep(self._settings.lease_ms / 3000)
            by_shard: dict[int, list[WorkItem]] = defaultdict(list)
            for r in self._running.values():
                by_shard[r.item.shard].append(r.item)
            for shard, items in by_shard.items():
                try:
                    await self._store.renew(shard, self.id, items)
                except STORE_ERRORS as e:
                    log.warning("renewing leases failed: %s", e)

    async def _control_loop(self, shards: list[int]) -> None:
        keys = [self._store.keys.shard(s).control for s in shards]
        async for fields in self._store.follow(keys, block_ms=2000):
            if fields is not None:
                self._stop(fields)

    def _stop(self, fields: dict[bytes, bytes]) -> None:
        gid = fields[b"g"].decode()
        node = fields.get(b"n", b"").decode()
        attempt = fields.get(b"a", b"").decode()
        for r in self._running.values():
            it = r.item
            if it.graph_id != gid or (node and (it.node != node or str(it.attempt) != attempt)):
                continue
            if r.task is not None and not r.task.done():
                loaded = self._graphs.cached(gid)
                log.info(
                    "stopping %s/%s attempt %d",
                    gid,
                    it.node,
                    it.attempt,
                    extra={
                        "graph_id": gid,
                        "node_id": it.node,
                        "attempt": it.attempt,
                        "trace_id": trace_id_of(loaded.traceparent if loaded else ""),
                    },
                )
                r.stopped_by_control = True
                r.task.cancel()

    async def _heartbeat_loop(self) -> None:
        """Register and keep the registration fresh (ListWorkers, health); a worker that
        stops heartbeating ages out after DAGO_WORKER_TTL_MS."""
        info: dict[str, Any] = {
            "id": self.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slots": self._settings.worker_slots,
            "kinds": sorted(self._handlers),
            "started_ms": int(time.time() * 1000),
            "metrics_port": self._settings.worker_metrics_port,
        }
        while True:
            raise_if_cancelling()
            try:
                now = int(time.time() * 1000)
                info["in_flight"] = len(self._running)
                await self._store.heartbeat(self.id, dumps(info), now)
            except STORE_ERRORS as e:
                log.warning("worker heartbeat failed: %s", e)
            await asyncio.sleep(self._settings.worker_heartbeat_ms / 1000)

    async def _deregister(self) -> None:
        with contextlib.suppress(*STORE_ERRORS):
            await self._store.deregister(self.id)


_OUTCOMES = {"ok": "completed", "retry": "retrying", "fail": "failed"}


def _node(loaded: LoadedGraph | None, item: WorkItem) -> CompiledNode | None:
    if loaded is None or loaded.compiled is None:
        return None
    return loaded.compiled.nodes.get(item.node)


def _uncancel() -> int:
    task = asyncio.current_task()
    return task.uncancel() if task is not None else 0


def _timeout(node: CompiledNode) -> NodeFailure:
    return NodeFailure(
        graph_pb2.ERROR_CLASS_TIMEOUT,
        f"the attempt ran past its timeout of {node.attempt_timeout:g}s",
        True,
    )


def _render(plan: _Plan, scope: dict[str, Any]) -> tuple[Any, str]:
    """The node's input, and its JSON."""
    try:
        value = plan.node.inputs.render(scope)
    except EvalError as e:
        raise invalid(f"inputs: {e}") from None
    return value, plan.static_input if plan.static_input is not None else dumps(value)


def _succeeded(plan: _Plan, scope: dict[str, Any], rendered: Any, result: NodeResult) -> list[Any]:
    """The complete.lua fields of an attempt whose handler returned ``result``."""
    node = plan.node
    output = result.value
    if node.output:
        data = {**scope, "result": result.value, "input": rendered}
        try:
            output = {name: expr.evaluate(data) for name, expr in node.output.items()}
        except EvalError as e:
            raise invalid(f"output: {e}") from None
    if result.route is None and plan.edges is not None:
        edges = plan.edges
    else:
        edges = ",".join(map(str, _taken(node, scope, output, result.route)))
    usage = result.usage.to_arg() if result.usage else ""
    route = dumps(result.route) if result.route else ""
    return ["ok", dumps(output), edges, usage, route, "", 0]


def _taken(
    node: CompiledNode, scope: dict[str, Any], output: Any, route: dict[str, Any] | None
) -> list[int]:
    """Indexes of the outgoing edges taken, given the node's output."""
    if not node.out_edges:
        return []
    data = {**scope, "nodes": {**scope["nodes"], node.id: {"output": output}}}
    taken = []
    for e in node.out_edges:
        if route is not None and e.label != route["route"]:
            continue
        if e.condition is not None:
            try:
                if not e.condition.evaluate_bool(data):
                    continue
            except EvalError as err:
                raise invalid(f"edges[{e.index}].condition: {err}") from None
        taken.append(e.index)
    return taken
