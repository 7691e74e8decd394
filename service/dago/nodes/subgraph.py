"""The ``subgraph`` node kind: runs a graph as a child run of its own (docs/semantics.md,
"Sub-graphs").

Checked at submit: exactly one of ``subgraph.graph`` and ``subgraph.definition`` (the API
resolves a definition and pins it, filling ``graph`` in, before the graph compiles; an
unresolved reference is accepted only in a definition being published); the child's graph
compiles one nesting level deeper, its violations named at their path inside the node
(``graph.nodes[2].subgraph.graph.nodes[0]...``); past DAGO_MAX_GRAPH_DEPTH levels the node
is refused (``graph.nodes[2].subgraph.graph.nodes[0].subgraph: nesting depth 6 exceeds 5``).

An attempt never waits in the worker. When no outcome of a child is recorded for its
iteration and attempt, it returns what to start (``NodeResult.child``): the worker starts the
child with the ``spawn`` function, which parks the node (WAITING, no slot, no pending item).
When the child ends, its outcome is recorded for the node and the node is queued again; that
start reads it (``dago.engine.topology.decision_ref``) and completes the node with the
child's result (``dago.engine.result.run_result``) and usage, or fails it with the child's
error (a cancelled child: ERROR_CLASS_PERMANENT), so the output mapping, edge conditions,
usage roll-up and retry policy apply as to any node (a retry starts a new child).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from dago.engine.checker import GraphInvalid
from dago.engine.compile import ANY_INPUTS, compile_graph
from dago.engine.kinds import CheckContext, KindParts
from dago.engine.model import CompiledGraph
from dago.engine.outcome import NodeFailure, Usage, invalid
from dago.engine.result import run_result
from dago.engine.topology import decision_ref
from dago.nodes.base import NodeContext, NodeDeps, NodeHandler, NodeKind, NodeResult
from dago.store.schema import ChildOutcome, Error, UsageJson
from dago.v1 import execution_pb2, graph_pb2


def check(node: graph_pb2.Node, ctx: CheckContext) -> KindParts:
    """The checks at submit of the module doc; the child's graph compiled."""
    sg = node.subgraph
    if not sg.HasField("graph"):
        if not sg.definition:
            ctx.add("subgraph.graph", "give the child's graph, or a definition to run")
        return KindParts(waits=True)  # a reference the run's submit resolves
    depth = ctx.options.depth + 1
    # A map's graph body is compiled here too (dago.nodes.map.graph_body): its path is the
    # request's, map.graph, not a subgraph field.
    body = ctx.path.endswith(".map.graph")
    at = ctx.path if body else f"{ctx.path}.subgraph.graph"
    if depth > ctx.options.max_depth:
        ctx.checker.add(
            ctx.path if body else f"{ctx.path}.subgraph",
            f"nesting depth {depth} exceeds {ctx.options.max_depth} (DAGO_MAX_GRAPH_DEPTH)",
        )
        return KindParts(waits=True)
    options = replace(ctx.options, depth=depth)
    try:
        child = compile_graph(sg.graph, ANY_INPUTS, ctx.cel, options, at)
    except GraphInvalid as e:
        for v in e.violations:
            ctx.checker.add(v.field, v.description)
        return KindParts(waits=True)
    return KindParts(waits=True, child=child)


@dataclass(frozen=True)
class ChildRun:
    """What a subgraph node's attempt starts (``NodeResult.child``): the compiled graph and
    the inputs (the node's rendered inputs)."""

    compiled: CompiledGraph
    inputs: dict[str, Any]


def _usage(u: Any) -> Usage | None:
    if not isinstance(u, dict):
        return None
    return Usage(
        input_tokens=int(u.get(UsageJson.INPUT) or 0),
        output_tokens=int(u.get(UsageJson.OUTPUT) or 0),
        cache_creation_input_tokens=int(u.get(UsageJson.CACHE_WRITE) or 0),
        cache_read_input_tokens=int(u.get(UsageJson.CACHE_READ) or 0),
        cost_usd=float(u.get(UsageJson.COST) or 0),
    )


class SubgraphHandler(NodeHandler):
    """Starts a node's child run, or completes the node from its child's outcome."""

    async def run(self, ctx: NodeContext) -> NodeResult:
        """See the module doc."""
        compiled = ctx.node.child
        if compiled is None:
            raise invalid("subgraph: the child's graph was not resolved when the run started")
        found = ctx.scope["nodes"].get(decision_ref(ctx.node.id))
        rec = found.get("output") if isinstance(found, dict) else None
        if (
            isinstance(rec, dict)
            and rec.get(ChildOutcome.ITERATION) == ctx.iteration
            and rec.get(ChildOutcome.ATTEMPT) == ctx.attempt
        ):
            return _ended(compiled, rec, ctx.input)
        if ctx.node.proto.HasField("inputs"):
            inputs = ctx.input
        elif isinstance(ctx.scope.get("index"), int):
            inputs = item_inputs(ctx.scope.get("item"), ctx.scope["index"])
        else:
            inputs = {}
        if not isinstance(inputs, dict):
            raise invalid("subgraph: the node's inputs (the child run's inputs) must be an object")
        return NodeResult(None, child=ChildRun(compiled, inputs))


def item_inputs(item: Any, index: int) -> dict[str, Any]:
    """A map item's child run's inputs when its subgraph body gives none (a map's graph
    body): the item's fields when it is an object, else ``{"item": item, "index": index}``."""
    if isinstance(item, dict):
        return dict(item)
    return {"item": item, "index": index}


def _ended(compiled: CompiledGraph, rec: dict[str, Any], inputs: Any) -> NodeResult:
    """The node's result from its child's recorded outcome (``schema.ChildOutcome``)."""
    gid = str(rec.get(ChildOutcome.GRAPH) or "")
    usage = _usage(rec.get(ChildOutcome.USAGE))
    state = rec.get(ChildOutcome.STATE)
    if state == execution_pb2.GRAPH_STATE_COMPLETED:
        outputs = rec.get(ChildOutcome.OUTPUTS) or {}
        return NodeResult(run_result(compiled, gid, inputs, outputs), usage=usage)
    err = rec.get(ChildOutcome.ERROR)
    err = err if isinstance(err, dict) else {}
    message = str(err.get(Error.MESSAGE) or "")
    if state == execution_pb2.GRAPH_STATE_FAILED:
        raise NodeFailure(
            int(err.get(Error.CLASS) or graph_pb2.ERROR_CLASS_PERMANENT),
            f"child run {gid} failed: {message}",
            bool(err.get(Error.RETRYABLE)),
            usage=usage,
        )
    raise NodeFailure(
        graph_pb2.ERROR_CLASS_PERMANENT,
        f"child run {gid} was cancelled: {message}",
        False,
        usage=usage,
    )


def _build(deps: NodeDeps) -> NodeHandler:
    return SubgraphHandler()


KIND = NodeKind("subgraph", check, _build)
