"""The node-kind registry (``dago.nodes``): compiling knows only the registered kinds and
calls each one's check; handlers are built from the registry and their abilities
(inline, warm, close) default to doing nothing."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf.json_format import ParseDict
from prometheus_client import CollectorRegistry

from dago.config import Settings
from dago.engine.cel import CelCompiler, Scope
from dago.engine.checker import GraphInvalid
from dago.engine.compile import compile_graph
from dago.engine.kinds import CheckContext, KindParts
from dago.engine.model import CompiledGraph, CompileOptions
from dago.nodes import KINDS, build_deps, build_handlers, kind_checks, tool
from dago.nodes.base import NodeContext, NodeDeps, NodeHandler, NodeKind, NodeResult
from dago.observe.metrics import Metrics
from dago.observe.tracing import Tracing
from dago.v1 import graph_pb2


@pytest.fixture(scope="module")
def cel() -> CelCompiler:
    return CelCompiler()


def graph(*nodes: dict[str, Any], edges: tuple[dict[str, str], ...] = ()) -> graph_pb2.Graph:
    return ParseDict({"nodes": list(nodes), "edges": list(edges)}, graph_pb2.Graph())


def compiled(cel: CelCompiler, g: graph_pb2.Graph, options: CompileOptions) -> CompiledGraph:
    return compile_graph(g, {}, cel, options)


def violations(cel: CelCompiler, g: graph_pb2.Graph, options: CompileOptions) -> dict[str, str]:
    with pytest.raises(GraphInvalid) as info:
        compile_graph(g, {}, cel, options)
    return {v.field: v.description for v in info.value.violations}


def test_every_kind_of_the_proto_is_registered_once() -> None:
    oneof = graph_pb2.Node.DESCRIPTOR.oneofs_by_name["kind"]
    assert [k.name for k in KINDS] == [f.name for f in oneof.fields]
    with pytest.raises(ValueError, match="two node kinds"):
        kind_checks((tool.KIND, tool.KIND))


def test_a_kind_not_registered_is_rejected_naming_the_registered_ones(cel: CelCompiler) -> None:
    options = CompileOptions(kinds=kind_checks((tool.KIND,)), tools={"echo"})
    found = violations(cel, graph({"id": "r", "router": {"routes": [{"name": "x"}]}}), options)
    assert found == {
        "graph.nodes[0].router": "the router node kind is not available on this server "
        "(available: tool)"
    }
    found = violations(cel, graph({"id": "a"}), options)
    assert found == {"graph.nodes[0]": "a node needs a kind: one of tool"}
    # A registry without kinds accepts no node at all.
    found = violations(
        cel, graph({"id": "a", "tool": {"name": "echo"}}), CompileOptions(kinds={}, tools=())
    )
    assert "(available: none)" in found["graph.nodes[0].tool"]


def test_a_registered_kind_s_check_is_called_and_its_parts_kept(cel: CelCompiler) -> None:
    seen: list[tuple[str, str, str, list[str]]] = []

    def check(node: graph_pb2.Node, ctx: CheckContext) -> KindParts:
        seen.append((node.id, ctx.path, ctx.root, [e.to for e in ctx.out_edges]))
        if not node.http.url.startswith("test:"):
            ctx.add("http.url", "a test url starts with test:")
        route = ctx.compile("input.go", Scope.ROUTE, "http.body")
        return KindParts(
            templates=ctx.templates({"http.url": node.http.url}), routes=[("go", route)]
        )

    options = CompileOptions(kinds={"http": check}, tools=())
    g = graph(
        {"id": "a", "http": {"url": "test:{{ inputs.missing }}"}},
        {"id": "b", "http": {"url": "test:b"}},
        edges=({"from": "a", "to": "b"},),
    )
    found = violations(cel, g, options)
    assert seen == [("a", "graph.nodes[0]", "graph", ["b"]), ("b", "graph.nodes[1]", "graph", [])]
    # The kind's template is checked like any other (its refs at the kind's field).
    assert (
        list(found) == ["graph.nodes[0].http.url"]
        and "inputs.missing" in found["graph.nodes[0].http.url"]
    )

    seen.clear()
    c = compiled(cel, graph({"id": "a", "http": {"url": "test:{{ input.x }}"}}), options)
    node = c.nodes["a"]
    assert list(node.templates) == ["http.url"]
    assert [name for name, _ in node.routes] == ["go"]
    found = violations(cel, graph({"id": "a", "http": {"url": "https://x"}}), options)
    assert found == {"graph.nodes[0].http.url": "a test url starts with test:"}


class RunOnly(NodeHandler):
    async def run(self, ctx: NodeContext) -> NodeResult:
        return NodeResult(ctx.input)


async def test_handler_abilities_default_to_nothing(cel: CelCompiler) -> None:
    options = CompileOptions(kinds=kind_checks(KINDS), tools={"echo"})
    node = compiled(cel, graph({"id": "a", "tool": {"name": "echo"}}), options).nodes["a"]
    handler = RunOnly()
    assert handler.inline(node) is None
    assert await handler.warm() is None
    assert await handler.close() is None
    with pytest.raises(TypeError):
        NodeHandler()  # type: ignore[abstract]


def deps(settings: Settings | None = None) -> NodeDeps:
    return build_deps(settings or Settings(), Metrics(CollectorRegistry()), Tracing("t", {}))


async def test_handlers_are_built_from_the_registry(cel: CelCompiler) -> None:
    built: list[NodeDeps] = []

    def build(d: NodeDeps) -> NodeHandler:
        built.append(d)
        return RunOnly()

    shared = deps()
    only = NodeKind("tool", lambda node, ctx: KindParts(), build)
    handlers = build_handlers(shared, (only,))
    assert list(handlers) == ["tool"] and isinstance(handlers["tool"], RunOnly)
    assert built == [shared]

    handlers = build_handlers(deps())
    assert list(handlers) == [k.name for k in KINDS]
    options = CompileOptions(kinds=kind_checks(), tools={"echo", "sleep"})
    g = compiled(
        cel,
        graph({"id": "e", "tool": {"name": "echo"}}, {"id": "s", "tool": {"name": "sleep"}}),
        options,
    )
    # The tool kind runs echo inline (it has an inline form), sleep in a task.
    assert handlers["tool"].inline(g.nodes["e"]) is not None
    assert handlers["tool"].inline(g.nodes["s"]) is None
    for handler in handlers.values():
        await handler.close()
