"""The ``map`` node kind: runs a body node once per item of a list (dynamic fan-out), at most
``max_concurrency`` items at a time across all workers, then completes with their outputs.

A map node's first attempt evaluates ``map.items`` (CEL over ``inputs``, ``nodes`` and
``graph``; it must yield a list) and returns the items (``NodeResult.expand``): the worker
reports them with the ``expand`` function, which stores them, parks the map node (it holds
no slot) and dispatches the first items. Each item is an instance of the body node, run by
whichever worker takes it, with ``item`` (its value) and ``index`` (its 0-based position) in
its templates' scope, under the body's own retry policy and attempt timeout. Counting items,
dispatching the next one as one ends, ``on_failure`` and ``max_failures`` are the
functions' (``store/lua/map.lua``). When every item ended (or one failed the map), the map
node is queued again: that start reads the summary the functions wrote
(``dago.engine.topology.map_result_ref``) and completes the node with
``{"items": [...], "completed": n, "failed": n, "total": n}`` (failed items null), through
the same output mapping and edge conditions as any node, or fails it naming the item.

A graph body (``map.graph``) runs each item as a child run: the body is compiled as a
``subgraph`` node (``graph_body``), so an item is an instance of a subgraph node, parked
(no slot) while its child runs, completed with the child's result when it ends.

Checked at submit: ``items`` is a CEL expression; exactly one body, ``node`` or ``graph``; the
body is not a router, a wait or a map; ``max_concurrency`` is 0 (10) to ``MAX_CONCURRENCY``;
``max_failures`` is not negative and only with ``COLLECT``. See docs/semantics.md, "Map nodes"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dago.engine.cel import EvalError, Scope
from dago.engine.kinds import CheckContext, KindParts
from dago.engine.outcome import NodeFailure, invalid
from dago.engine.topology import map_result_ref
from dago.nodes.base import NodeContext, NodeDeps, NodeHandler, NodeKind, NodeResult
from dago.store.schema import Error, MapResult
from dago.store.values import NotJson, dumps
from dago.v1 import graph_pb2

DEFAULT_CONCURRENCY = 10
MAX_CONCURRENCY = 10_000
MAX_ITEMS = 100_000
"""Most items one map may have (each is a node's worth of fields in Redis)."""
NOT_A_BODY = ("router", "wait", "map")
"""Kinds a map's body may not be: a router has no edges to choose among, a wait would need
a signal per item, and a map inside a map is not supported yet."""


def check(node: graph_pb2.Node, ctx: CheckContext) -> KindParts:
    """The checks at submit of the module doc; ``map.items`` compiled, the body handed to the
    engine (``KindParts.body``) to compile as any node."""
    m = node.map
    body = None
    if m.HasField("graph") and m.HasField("node"):
        ctx.add("map.graph", "give one body: a node (map.node) or a graph (map.graph)")
    elif m.HasField("graph"):
        body = graph_body(node)
    elif not m.HasField("node"):
        ctx.add("map.node", "a map needs a body: the node to run per item (map.node)")
    else:
        body = m.node
        kind = body.WhichOneof("kind")
        if kind in NOT_A_BODY:
            ctx.add(f"map.node.{kind}", f"a {kind} node cannot be a map's body")
        elif kind == "agent" and body.agent.approval_required_tools:
            # An approval parks its node for a person's decision; items are instances of
            # one node and would need a signal each. A child run per item can wait.
            ctx.add("map.node.agent.approval_required_tools", "an agent in a map's node body "
                    "cannot wait for tool approvals: give the map a graph body (map.graph); "
                    "each item then runs as a child run, where approvals work")  # fmt: skip
    expressions = {}
    if not m.items.strip():
        ctx.add("map.items", "a map needs items: a CEL expression yielding a list")
    else:
        expr = ctx.compile(m.items, Scope.CONDITION, "map.items")
        if expr is not None:
            expressions["map.items"] = expr
    if not 0 <= m.max_concurrency <= MAX_CONCURRENCY:
        ctx.add("map.max_concurrency", f"must be between 0 (means {DEFAULT_CONCURRENCY}) and "
                f"{MAX_CONCURRENCY}")  # fmt: skip
    if m.max_failures < 0:
        ctx.add("map.max_failures", "must not be negative")
    elif m.max_failures and m.on_failure != graph_pb2.MAP_FAILURE_POLICY_COLLECT:
        ctx.add("map.max_failures", "is only used with on_failure COLLECT")
    return KindParts(expressions=expressions, body=body)


def graph_body(node: graph_pb2.Node) -> graph_pb2.Node:
    """A map's graph body (``map.graph``) as the node its items are instances of: a
    ``subgraph`` node running that graph, with no inputs, so each item's child run gets the
    item as its inputs (``dago.nodes.subgraph.item_inputs``); compiled one nesting level
    deeper, as any subgraph node's graph."""
    return graph_pb2.Node(id=node.id, subgraph=graph_pb2.SubgraphNode(graph=node.map.graph))


@dataclass(frozen=True)
class MapExpansion:
    """What a map's first attempt found (``NodeResult.expand``): its items, each as JSON,
    and how to run them."""

    items: list[str]
    max_concurrency: int
    on_failure: int
    max_failures: int


class MapHandler(NodeHandler):
    """Evaluates a map's items (first start), or completes it from its items' summary."""

    async def run(self, ctx: NodeContext) -> NodeResult:
        """One attempt (it never waits; not inline: its report is ``expand``, not apply)."""
        found = ctx.scope["nodes"].get(map_result_ref(ctx.node.id))
        rec = found.get("output") if isinstance(found, dict) else None
        if isinstance(rec, dict) and rec.get(MapResult.ITERATION) == ctx.iteration:
            return _done(rec)
        return NodeResult(None, expand=_expansion(ctx))


def _expansion(ctx: NodeContext) -> MapExpansion:
    spec = ctx.node.proto.map
    expr = ctx.node.expressions.get("map.items")
    if expr is None:
        raise invalid("map.items: not compiled")
    data = {k: ctx.scope.get(k) for k in ("inputs", "nodes", "graph")}
    try:
        items = expr.evaluate(data)
    except EvalError as e:
        raise invalid(f"map.items: {e}") from None
    if not isinstance(items, list):
        raise invalid(f"map.items must yield a list, not {_type_name(items)}")
    if len(items) > MAX_ITEMS:
        raise invalid(f"map.items yielded {len(items)} items; a map may have {MAX_ITEMS}")
    try:
        texts = [dumps(x) for x in items]
    except NotJson as e:
        raise invalid(f"map.items: {e}") from None
    return MapExpansion(
        items=texts,
        max_concurrency=spec.max_concurrency or DEFAULT_CONCURRENCY,
        on_failure=spec.on_failure,
        max_failures=spec.max_failures,
    )


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a bool"
    if isinstance(value, dict):
        return "a map"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__


def _done(rec: dict[str, Any]) -> NodeResult:
    """The map's output, or its failure (the item that failed it)."""
    counts = {
        k: int(rec.get(k) or 0) for k in (MapResult.COMPLETED, MapResult.FAILED, MapResult.TOTAL)
    }
    if MapResult.FAILED_INDEX in rec:
        err = rec.get(MapResult.ERROR) or {}
        cls = int(err.get(Error.CLASS) or graph_pb2.ERROR_CLASS_PERMANENT)
        raise NodeFailure(
            graph_pb2.ErrorClass.ValueType(cls),
            f"map item {rec[MapResult.FAILED_INDEX]} failed: {err.get(Error.MESSAGE, '')} "
            f"({counts[MapResult.FAILED]} of {counts[MapResult.TOTAL]} items failed)",
            False,
        )
    return NodeResult({MapResult.ITEMS: rec.get(MapResult.ITEMS) or [], **counts})


def _build(deps: NodeDeps) -> NodeHandler:
    return MapHandler()


KIND = NodeKind("map", check, _build)
