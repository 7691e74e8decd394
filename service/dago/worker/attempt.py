"""Running node attempts: from a started work item to the ``Result`` the worker applies.

An attempt runs in its own task, except when its handler can run it without waiting
(the built-in ``echo`` tool: ``Tool.inline``): then it runs right where it was started,
and its result goes to the worker's completer with the rest of its batch. Attempt
timeouts are enforced by one timer per worker, set for the earliest deadline of the
attempts running in tasks, which cancels the ones past their deadline (instead of an
``asyncio.timeout`` per attempt).

A failed attempt is reported as what failed (its error class, whether it is retryable,
any retry-after); whether it runs again is decided where the graph's state is, by the
retry rule of the Redis functions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry.trace import Span

from dago.engine.cel import EvalError
from dago.engine.graphcache import LoadedGraph
from dago.engine.ids import new_graph_id
from dago.engine.model import CompiledNode
from dago.engine.outcome import Throttled
from dago.engine.topology import decision_ref
from dago.nodes.base import Handler, Inline, NodeContext, NodeFailure, NodeResult, invalid
from dago.nodes.subgraph import ChildRun
from dago.observe.logs import NODE, NodeFields
from dago.observe.metrics import Metrics
from dago.observe.redact import Redactor
from dago.observe.tracing import Tracing, fail, trace_id_of
from dago.store.functions import (
    ExpandArgs,
    Expanding,
    Outcome,
    Result,
    Spawn,
    Spawning,
    Started,
    ThrottledAttempt,
    Waiting,
    WorkItem,
    error_json,
    usage_arg,
    wait_arg,
)
from dago.store.schema import Detail, Error, MapItems, Node
from dago.store.store import Store
from dago.store.values import NotJson, dumps
from dago.v1 import execution_pb2, graph_pb2

log = logging.getLogger("dago.worker")

NO_DEADLINE = float("inf")


@dataclass(slots=True, eq=False)
class Running:
    """An attempt started and not yet applied."""

    item: WorkItem
    task: asyncio.Task[None] | None = None
    """None for an attempt run inline (it finished as it started)."""
    stopped_by_control: bool = False
    deadline: float = NO_DEADLINE
    """Loop time past which the attempt times out, while its handler runs in ``task``."""
    timed_out: bool = False
    reported: bool = False
    """Its result went to the completer."""
    kind: str = "unknown"
    seconds: float = 0.0
    """How long the attempt ran (set when it finishes)."""
    error: str = ""
    """The message of its failure, if it failed."""
    span: Span | None = None
    """Its span, open until its result is applied (or it is dropped)."""


@dataclass(slots=True)
class Plan:
    """What every attempt of one compiled node needs, worked out once per worker."""

    node: CompiledNode
    inline: Inline | None
    """The handler's synchronous form for this node, if it has one."""
    static_input: str | None
    """The JSON of the node's input when its template has no placeholder."""
    edges: str | None
    """The outgoing edges taken when no edge has a condition (and no route is chosen)."""


@dataclass(frozen=True)
class Limits:
    """What one attempt may produce (bytes of JSON): its input and output
    (DAGO_MAX_NODE_BYTES), and each event it records (DAGO_MAX_EVENT_BYTES). Past them the
    attempt fails with ERROR_CLASS_LIMIT before anything is written."""

    node_bytes: int = 1 << 20
    event_bytes: int = 256 << 10
    max_depth: int = 5
    """DAGO_MAX_GRAPH_DEPTH: how deeply child runs may nest (checked as a child starts)."""
    default_deadline_s: float = 24 * 3600
    """A child run's deadline when its graph sets none (DAGO_DEFAULT_DEADLINE_S; the
    parent's deadline bounds it too)."""


Finished = Result | Waiting | Spawn | Expanding | ThrottledAttempt
"""A finished attempt's report: a ``Result`` to apply, a wait node's ``Waiting`` (it found no
decision) to put in WAITING, a subgraph node's ``Spawn`` (its child run to start), a map's
``Expanding`` (its items), or a ``ThrottledAttempt`` (a model rate limit had no room) to
queue again later."""

Report = Callable[[Running, Finished], None]
"""Takes a finished attempt's report (to the completer)."""


class Attempts:
    """The attempts one worker runs: ``running`` maps each held work item's id to its
    attempt until the worker applies its result (or drops it)."""

    def __init__(
        self,
        store: Store,
        handlers: Mapping[str, Handler],
        worker_id: str,
        redact: Redactor,
        metrics: Metrics,
        tracing: Tracing,
        report: Report,
        limits: Limits | None = None,
    ) -> None:
        self._store = store
        self._handlers = handlers
        self._id = worker_id
        self._redact = redact
        self._metrics = metrics
        self._tracing = tracing
        self._report = report
        self._limits = limits or Limits()
        self.running: dict[tuple[int, bytes], Running] = {}
        """By ``WorkItem.key``."""
        self._plans: dict[int, Plan] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = NO_DEADLINE

    # --- starting ----------------------------------------------------------------------

    def launch(self, started: Sequence[Started], loaded: Mapping[str, LoadedGraph | None]) -> int:
        """Run the attempts a function marked running, each inline or in a task of its own;
        returns how many were dropped (an inline run that broke before reporting: a bug of
        ours; the item stays pending in Redis and is reclaimed after the lease)."""
        dropped = 0
        for s in started:
            item = s.item
            if item.key in self.running:
                # Reclaim never hands a worker its own items, so this is a second process
                # under this worker's name: the item runs in the first one.
                log.error("work item %r already runs here; not starting it twice", item.msg_id)
                dropped += 1
                continue
            graph = loaded.get(item.graph_id)
            node = _node(graph, item)
            plan = self._plan(node) if node is not None else None
            inputs = graph.inputs if graph is not None else {}
            nodes = {n: {"output": json.loads(raw)} for n, raw in s.outputs} if s.outputs else {}
            name = graph.name if graph else ""
            scope: dict[str, Any] = {
                "inputs": inputs,
                "nodes": nodes,
                "graph": {"id": item.graph_id, "name": name},
            }
            if MapItems.SEP in item.node:
                _item_scope(item.node, scope)
            else:  # null outside a map's body (docs/semantics.md, "Map nodes")
                scope["item"] = scope["index"] = None
            running = Running(item)
            self.running[item.key] = running
            if plan is not None and plan.inline is not None and graph is not None:
                try:
                    with self._observing(running, graph):
                        self._inline_attempt(running, plan, scope)
                except Exception:
                    log.exception("running %s/%s inline failed", item.graph_id, item.node)
                    if not running.reported and self.forget(item.key):
                        dropped += 1
            else:
                running.task = asyncio.create_task(self._observed(running, graph, plan, scope))
        return dropped

    def forget(self, key: tuple[int, bytes]) -> bool:
        """Drop an attempt that will not be applied (still pending in Redis, it is reclaimed
        after the lease); True when it was held."""
        running = self.running.pop(key, None)
        if running is None:
            return False
        if running.span is not None and running.span.is_recording():
            running.span.end()
        return True

    def applied(self, running: Running, state: int) -> None:
        """Count an attempt whose result was applied and end its span, with what became of
        its node: ``state`` is the node's state the result left (the retry rule's decision)
        or UNSPECIFIED when the result was stale."""
        if running.stopped_by_control:
            outcome = "cancelled"
        elif state in _OUTCOMES:
            outcome = _OUTCOMES[state]
        else:  # stale: the attempt's own result
            outcome = "failed" if running.error else "completed"
        self._metrics.node_done(running.kind, outcome, running.seconds)
        span = running.span
        if span is not None:
            span.set_attribute("dago.node.outcome", outcome)
            if outcome != "completed":
                fail(span, outcome, running.error)
            span.end()

    def _plan(self, node: CompiledNode) -> Plan:
        """The plan of ``node`` (compiled nodes are shared and never change)."""
        plan = self._plans.get(id(node))
        if plan is not None and plan.node is node:
            return plan
        handler = self._handlers.get(node.kind)
        # Which nodes are inline is the compiled node's decision (the functions deliver
        # their items unstarted by the same rule); the handler gives the synchronous form.
        inline = getattr(handler, "inline", None) if node.inline else None
        edges = None
        if all(e.condition is None for e in node.out_edges):
            edges = ",".join(str(e.index) for e in node.out_edges)
        plan = Plan(
            node=node,
            inline=inline(node) if inline is not None else None,
            static_input=dumps(node.inputs.value) if node.inputs.is_static else None,
            edges=edges,
        )
        if len(self._plans) >= 65536:  # graphs come and go; the plans of old ones with them
            self._plans.clear()
        self._plans[id(node)] = plan
        return plan

    # --- running -----------------------------------------------------------------------

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
            "dago.worker.id": self._id,
        }
        if node is not None and node.kind == "tool":
            attrs["dago.tool.name"] = node.proto.tool.name
        return f"node {node.kind if node else 'unknown'}", attrs

    @contextlib.contextmanager
    def _observing(self, running: Running, loaded: LoadedGraph | None) -> Iterator[None]:
        """The attempt's log fields (set for the block only) and, when tracing is on, a span
        joining the graph's trace, current for the block and ended once the attempt's
        result is applied (``applied``), or here when it ends without one."""
        item = running.item
        tid = loaded.trace_id if loaded else ""
        token = NODE.set(NodeFields(item.graph_id, item.node, item.attempt, item.iteration, tid))
        try:
            if not self._tracing.enabled:
                yield
            else:
                name, attrs = self._span_args(item, loaded)
                tp = loaded.traceparent if loaded else ""
                with self._tracing.open_span(name, attrs, self._tracing.extract(tp)) as span:
                    running.span = span
                    yield
        except BaseException as e:
            if running.span is not None and not running.reported:
                fail(running.span, type(e).__name__)
                running.span.end()
            raise
        finally:
            NODE.reset(token)

    async def _observed(
        self,
        running: Running,
        loaded: LoadedGraph | None,
        plan: Plan | None,
        scope: dict[str, Any],
    ) -> None:
        """Run an attempt in its task, observed (``_observing``)."""
        with self._observing(running, loaded):
            await self._attempt(running, loaded, plan, scope)

    def _inline_attempt(self, running: Running, plan: Plan, scope: dict[str, Any]) -> None:
        """``_attempt`` of an attempt run inline (``plan.inline`` is set)."""
        started = time.monotonic()
        item = running.item
        node = plan.node
        rendered = ""
        run = plan.inline
        assert run is not None
        try:
            value, rendered = _render(plan, scope, self._limits.node_bytes)
            result = run(self._context(item, node, scope, value))
            fields = _succeeded(plan, scope, value, result, self._limits.node_bytes)
        except NodeFailure as f:
            fields = _failed(f)
        except Exception as e:
            fields = _bug(e, item)
        self._finish(running, node, rendered, fields, started)

    async def _attempt(
        self,
        running: Running,
        loaded: LoadedGraph | None,
        plan: Plan | None,
        scope: dict[str, Any],
    ) -> None:
        started = time.monotonic()
        item = running.item
        node = plan.node if plan is not None else None
        rendered = ""
        spawn: Spawn | None = None
        try:
            if plan is None or node is None:
                problem = loaded.problem if loaded else "the graph's definition is gone"
                raise invalid(f"cannot run node {item.node!r}: {problem}")
            value, rendered = _render(plan, scope, self._limits.node_bytes)
            result = await self._execute(running, node, scope, value)
            if result.expand is not None:
                self._expand(running, node, rendered, result.expand, started)
                return
            if result.child is not None:
                spawn = self._spawn(item, node, result.child)
                fields = _SPAWNED
            else:
                fields = _succeeded(plan, scope, value, result, self._limits.node_bytes)
        except NodeFailure as f:
            fields = _failed(f)
        except Throttled as t:
            assert node is not None  # only a handler throttles
            self._throttled(running, node, rendered, t, started)
            return
        except asyncio.CancelledError:
            if not running.stopped_by_control:
                raise
            # Cancelled because the graph ended or the attempt timed out in Redis: the
            # report below is fenced out there and only acks the work item.
            fields = _failed(invalid("cancelled"))
        except Exception as e:
            fields = _bug(e, item)
        if spawn is not None and fields is _SPAWNED:
            self._observe(running, node, fields, started)
            running.reported = True
            self._report(running, spawn)
            return
        self._finish(running, node, rendered, fields, started)

    def _spawn(self, item: WorkItem, node: CompiledNode, child: ChildRun) -> Spawn:
        """The ``spawn`` call of a subgraph node's attempt starting its child run: a fresh id
        on the parent's shard, the child's graph as stored and its topology, the limits its
        graph sets."""
        compiled = child.compiled
        g = compiled.proto
        limits = self._limits
        if g.limits.HasField("deadline"):
            deadline_ms = g.limits.deadline.ToMilliseconds()
        else:
            deadline_ms = int(limits.default_deadline_s * 1000)
        try:
            inputs = dumps(child.inputs)
        except NotJson as e:
            raise invalid(f"subgraph inputs: {e}") from None
        sg = node.proto.subgraph
        args = Spawning(
            worker=self._id,
            max_depth=limits.max_depth,
            msg_id=item.msg_id,
            graph_id=item.graph_id,
            node=item.node,
            attempt=item.attempt,
            iteration=item.iteration,
            execution=item.execution,
            # A map's item (a graph body): the child's parent link names the item.
            instance=item.node.rpartition(MapItems.SEP)[2] if MapItems.SEP in item.node else "",
            input=_bounded(inputs, "the child run's inputs", limits.node_bytes),
            child_id=new_graph_id(item.shard),
            name=g.name,
            definition=g.SerializeToString(deterministic=True),
            node_ids=dumps(list(compiled.nodes)),
            start_plans=dumps(list(compiled.start_plans.values())),
            entries=dumps(compiled.entries),
            max_steps=g.limits.max_steps,
            max_tokens=g.limits.max_tokens,
            max_cost=repr(g.limits.max_cost_usd),
            deadline_ms=deadline_ms,
            def_name=sg.definition.partition("@")[0] if sg.definition_version else "",
            def_version=sg.definition_version,
            def_digest=sg.definition_digest,
        )
        return Spawn(args, compiled.topology)

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
            emit=lambda events: self._emit(item, events),
            worker_id=self._id,
            shard=item.shard,
            execution=item.execution,
            msg_id=item.msg_id,
            address=item.node,
        )

    async def _emit(self, item: WorkItem, events: Sequence[tuple[str, str]]) -> bool:
        """Record events of a running attempt (False: it is no longer current); an event
        over the limit fails the attempt instead."""
        limit = self._limits.event_bytes
        for kind, detail in events:
            if len(detail) > limit:
                raise _too_large(f"a {kind} event", len(detail), limit, "DAGO_MAX_EVENT_BYTES")
        return await self._store.append(item, events)

    async def _execute(
        self, running: Running, node: CompiledNode, scope: dict[str, Any], rendered: Any
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
            running.deadline = NO_DEADLINE
            # Like asyncio.timeout: our own cancellation becomes the timeout, one from
            # elsewhere (the control stream, a drain) goes on.
            if running.timed_out and _uncancel() == 0 and not running.stopped_by_control:
                raise _timeout(node) from None
            raise
        running.deadline = NO_DEADLINE
        if running.timed_out:  # the handler swallowed the cancellation and returned
            _uncancel()
        return result

    def _finish(
        self,
        running: Running,
        node: CompiledNode | None,
        rendered: str,
        fields: _Fields,
        started: float,
    ) -> None:
        """Count a finished attempt and hand its result to the completer."""
        self._observe(running, node, fields, started)
        item = running.item
        outcome, output, taken, usage, route, error, retry_after_ms = fields
        result: Result | Waiting
        # _waits: output is the wait, retry_after_ms its timeout, route what the node keeps
        if outcome == Outcome.WAIT:
            result = Waiting(
                item.msg_id,
                item.graph_id,
                item.node,
                item.attempt,
                item.iteration,
                item.execution,
                rendered,
                output,
                retry_after_ms,
                route,
            )
            running.reported = True
            self._report(running, result)
            return
        result = Result(
            item.msg_id,
            item.graph_id,
            item.node,
            item.attempt,
            item.iteration,
            item.execution,
            rendered,
            outcome,
            output,
            taken,
            usage,
            route,
            # Only the error is redacted (by shape): outputs, inputs, routes and events hold
            # the tenant's own data, what it computed from it, the model's text and what the
            # servers it chose returned; none of those ever held the operator's secrets.
            self._redact(error) if error else error,
            retry_after_ms,
            item.start_deliveries,
        )
        running.reported = True
        self._report(running, result)

    def _expand(
        self, running: Running, node: CompiledNode, rendered: str, found: Any, started: float
    ) -> None:
        """Hand a map's items (``dago.nodes.map.MapExpansion``) to the completer, which
        reports them with ``expand``."""
        self._observe(running, node, (Outcome.EXPAND, "", "", "", "", "", 0), started)
        item = running.item
        args = ExpandArgs(
            self._id,
            item.msg_id,
            item.graph_id,
            item.node,
            item.attempt,
            item.iteration,
            item.execution,
            rendered,
            found.max_concurrency,
            found.on_failure,
            found.max_failures,
            node.item_plan,
        )
        running.reported = True
        self._report(running, Expanding(args, found.items))

    def _throttled(
        self, running: Running, node: CompiledNode, rendered: str, t: Throttled, started: float
    ) -> None:
        """Hand an attempt a model rate limit refused to the completer: its node is queued
        again after the wait, the attempt not consumed (``lua/throttle.lua``)."""
        running.seconds = time.monotonic() - started
        running.kind = node.kind
        item = running.item
        detail = dumps(
            {
                Detail.PROVIDER: t.provider,
                Detail.MODEL: t.model,
                Detail.WAIT_MS: t.wait_ms,
                Detail.REASON: t.reason,
            }
        )
        running.reported = True
        self._report(
            running,
            ThrottledAttempt(
                item.msg_id,
                item.graph_id,
                item.node,
                item.attempt,
                item.iteration,
                item.execution,
                rendered,
                t.wait_ms,
                detail,
            ),
        )

    def _observe(
        self, running: Running, node: CompiledNode | None, fields: _Fields, started: float
    ) -> None:
        """Note how one finished attempt went (counted once applied: ``applied``)."""
        running.seconds = time.monotonic() - started
        running.kind = node.kind if node else "unknown"
        if fields[0] == Outcome.ERROR:
            running.error = str(json.loads(fields[5]).get(Error.MESSAGE, "")) or "failed"
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "node attempt %s in %.1f ms",
                "failed" if running.error else "completed",
                running.seconds * 1e3,
            )

    # --- timeouts and stops ------------------------------------------------------------

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
        self._timer_at = NO_DEADLINE
        now = asyncio.get_running_loop().time()
        soonest = NO_DEADLINE
        for r in self.running.values():
            if r.deadline <= now:
                if r.task is not None and not r.timed_out and not r.task.done():
                    r.timed_out = True
                    r.task.cancel()
            elif r.deadline < soonest:
                soonest = r.deadline
        if soonest != NO_DEADLINE:
            self._arm(soonest)

    def stop(
        self, graph_id: str, node: str, attempt: str, execution: str, cached: LoadedGraph | None
    ) -> None:
        """Cancel the running attempts of ``graph_id`` (only ``node``'s attempt ``attempt``,
        and of it only execution ``execution`` when given, when ``node`` is given): the graph
        ended, Redis timed the attempt out, or another worker took the item over."""
        for r in self.running.values():
            it = r.item
            if it.graph_id != graph_id or (
                node
                and (
                    it.node != node
                    or str(it.attempt) != attempt
                    or (execution and str(it.execution) != execution)
                )
            ):
                continue
            if r.task is not None and not r.task.done():
                log.info(
                    "stopping %s/%s attempt %d",
                    graph_id,
                    it.node,
                    it.attempt,
                    extra={
                        "graph_id": graph_id,
                        "node_id": it.node,
                        "attempt": it.attempt,
                        "trace_id": trace_id_of(cached.traceparent if cached else ""),
                    },
                )
                r.stopped_by_control = True
                r.task.cancel()

    def cancel_timer(self) -> None:
        """Stop the timeout timer (the worker stops)."""
        if self._timer is not None:
            self._timer.cancel()


_OUTCOMES: dict[int, str] = {
    execution_pb2.NODE_STATE_QUEUED: "throttled",
    execution_pb2.NODE_STATE_WAITING: "waiting",
    execution_pb2.NODE_STATE_COMPLETED: "completed",
    execution_pb2.NODE_STATE_RETRYING: "retrying",
    execution_pb2.NODE_STATE_FAILED: "failed",
}
"""The outcome label of an applied attempt, by the state it left its node in."""

_Fields = tuple[str, str, str, str, str, str, int]
"""outcome, output, taken, usage, route, error, retry_after_ms of a ``Result``."""

_SPAWNED: _Fields = (Outcome.SPAWN, "", "", "", "", "", 0)
"""The fields of an attempt that starts a child run (reported as a ``Spawn``)."""


def _node(loaded: LoadedGraph | None, item: WorkItem) -> CompiledNode | None:
    if loaded is None or loaded.compiled is None:
        return None
    node = loaded.compiled.nodes.get(item.node)
    if node is None and MapItems.SEP in item.node:
        # A map's item runs the map's body (schema.MapItems).
        owner = loaded.compiled.nodes.get(item.node.partition(MapItems.SEP)[0])
        return owner.body if owner is not None else None
    return node


def _item_scope(name: str, scope: dict[str, Any]) -> None:
    """``item`` and ``index`` of a map item's scope: its value (read by its start as the
    output of ``<map>#<index>:v``) and its position."""
    found = scope["nodes"].pop(name + MapItems.VALUE_REF, None)
    scope["item"] = found.get("output") if isinstance(found, dict) else None
    map_id, _, index = name.rpartition(MapItems.SEP)
    scope["index"] = int(index)
    # A body that waits (a subgraph) reads the outcome recorded for its item as its own:
    # the body is compiled under its map's id (decision_ref(body.id)).
    outcome = scope["nodes"].pop(name + Node.DECISION_REF, None)
    if outcome is not None:
        scope["nodes"][decision_ref(map_id)] = outcome


def _uncancel() -> int:
    task = asyncio.current_task()
    return task.uncancel() if task is not None else 0


def _timeout(node: CompiledNode) -> NodeFailure:
    return NodeFailure(
        graph_pb2.ERROR_CLASS_TIMEOUT,
        f"the attempt ran past its timeout of {node.attempt_timeout:g}s",
        True,
    )


def _too_large(what: str, size: int, limit: int, setting: str) -> NodeFailure:
    return NodeFailure(
        graph_pb2.ERROR_CLASS_LIMIT,
        f"{what} is {size} bytes; the limit is {limit} ({setting})",
        False,
    )


def _bounded(text: str, what: str, limit: int) -> str:
    """``text`` (JSON), or a LIMIT failure when it is longer than ``limit`` bytes."""
    if len(text) * 4 > limit:  # else it fits whatever its characters take in UTF-8
        size = len(text.encode())
        if size > limit:
            raise _too_large(what, size, limit, "DAGO_MAX_NODE_BYTES")
    return text


def _render(plan: Plan, scope: dict[str, Any], limit: int) -> tuple[Any, str]:
    """The node's input, and its JSON."""
    if plan.static_input is not None:
        return plan.node.inputs.value, plan.static_input
    try:
        value = plan.node.inputs.render(scope)
        text = dumps(value)
    except EvalError as e:
        raise invalid(f"inputs: {e}") from None
    except NotJson as e:  # 1.0/0.0 in CEL is Infinity
        raise invalid(f"inputs: {e}") from None
    return value, _bounded(text, "the node's input", limit)


def _usage(result: NodeResult | NodeFailure) -> str:
    u = result.usage
    if u is None:
        return ""
    return usage_arg(
        u.input_tokens,
        u.output_tokens,
        u.cache_creation_input_tokens,
        u.cache_read_input_tokens,
        u.cost_usd,
        u.provider,
        u.model,
    )


def _succeeded(
    plan: Plan, scope: dict[str, Any], rendered: Any, result: NodeResult, limit: int
) -> _Fields:
    """The result fields of an attempt whose handler returned ``result``."""
    node = plan.node
    if result.wait is not None:
        return _waits(result.wait, limit)
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
    try:
        route = dumps(result.route) if result.route else ""
        output_json = dumps(output)
    except NotJson as e:  # never stored: no reader of the run could read it back
        raise invalid(f"output: {e}") from None
    output_json = _bounded(output_json, "the node's output", limit)
    return Outcome.OK, output_json, edges, _usage(result), route, "", 0


def _waits(wait: Any, limit: int) -> _Fields:
    """The fields of an attempt that found no decision (a ``WaitRequest``): the wait as the
    output, its timeout (ms) in place of a retry-after and what the node keeps while it
    waits (an agent's conversation) in place of a route (``_finish`` makes them a
    ``Waiting``)."""
    try:
        text = wait_arg(
            wait.prompt,
            wait.display,
            wait.decisions,
            wait.payload_schema,
            wait.timeout_decision,
            wait.step,
        )
        saved = dumps(wait.saved) if wait.saved is not None else ""
    except (TypeError, ValueError) as e:
        raise invalid(f"wait: {e}") from None
    text = _bounded(text, "the wait's prompt and display", limit)
    saved = _bounded(saved, "the conversation kept while the node waits", limit)
    return Outcome.WAIT, text, "", "", saved, "", wait.timeout_ms


def _failed(f: NodeFailure) -> _Fields:
    """The result fields of a failed attempt: what failed, never whether to retry."""
    error = error_json(f.error_class, f.message, f.retryable)
    retry_after_ms = int((f.retry_after or 0.0) * 1000)
    return Outcome.ERROR, "", "", _usage(f), "", error, retry_after_ms


def _bug(e: Exception, item: WorkItem) -> _Fields:
    """A tool's own bug: logged and reported as a transient failure; the worker lives on."""
    log.exception("attempt %s/%s failed unexpectedly", item.graph_id, item.node)
    return _failed(NodeFailure(graph_pb2.ERROR_CLASS_TRANSIENT, f"{type(e).__name__}: {e}", True))


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
