"""Validation and compilation of submitted graphs (``dago.engine.compile.compile_graph``).

Graphs are built from plain dicts in proto JSON form and compiled with the real CEL
compiler; every rejection is checked by its exact field path and by key words of its
description (what a client needs to fix it).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

import pytest
from google.protobuf.json_format import ParseDict

from dago.engine.cel import CelCompiler
from dago.engine.checker import GraphInvalid, Violation
from dago.engine.compile import compile_graph
from dago.engine.model import CompiledGraph, CompileOptions
from dago.engine.retry import Retry
from dago.nodes import kind_checks
from dago.store.schema import NodeTopology, StartPlan
from dago.v1 import graph_pb2

KINDS = kind_checks()
OPTIONS = CompileOptions(kinds=KINDS, tools={"echo", "sleep"})


@pytest.fixture(scope="module")
def cel() -> CelCompiler:
    return CelCompiler()


# --- building graphs --------------------------------------------------------------------------


def tool(node_id: str, name: str = "echo", **fields: Any) -> dict[str, Any]:
    """A tool node (proto JSON); extra fields (inputs, retry, maxIterations...) go on the node."""
    return {"id": node_id, "tool": {"name": name}, **fields}


def router(
    node_id: str, routes: list[dict[str, Any]], *, mode: str = "", default: str = "", **fields: Any
) -> dict[str, Any]:
    """A router node; extra fields (inputs...) go on the node."""
    r: dict[str, Any] = {"routes": routes}
    if mode:
        r["mode"] = mode
    if default:
        r["defaultRoute"] = default
    return {"id": node_id, "router": r, **fields}


def edge(src: str, dst: str, condition: str = "", label: str = "") -> dict[str, Any]:
    e: dict[str, Any] = {"from": src, "to": dst}
    if condition:
        e["condition"] = condition
    if label:
        e["label"] = label
    return e


def graph(
    nodes: list[dict[str, Any]], edges: Iterable[dict[str, Any]] = (), **fields: Any
) -> graph_pb2.Graph:
    body = {"nodes": nodes, "edges": list(edges), **fields}
    return ParseDict(body, graph_pb2.Graph())


def add_edge(g: graph_pb2.Graph, src: str, dst: str, condition: str = "", label: str = "") -> None:
    ParseDict(edge(src, dst, condition, label), g.edges.add())


def compile_ok(
    cel: CelCompiler,
    g: graph_pb2.Graph,
    inputs: Mapping[str, Any] | None = None,
    options: CompileOptions = OPTIONS,
) -> CompiledGraph:
    try:
        return compile_graph(g, inputs or {}, cel, options)
    except GraphInvalid as e:
        pytest.fail(f"graph rejected: {e.violations}")


def rejected(
    cel: CelCompiler,
    g: graph_pb2.Graph,
    inputs: Mapping[str, Any] | None = None,
    options: CompileOptions = OPTIONS,
    root: str = "graph",
) -> list[Violation]:
    with pytest.raises(GraphInvalid) as info:
        compile_graph(g, inputs or {}, cel, options, root=root)
    assert info.value.violations, "GraphInvalid without violations"
    return info.value.violations


def fields(violations: list[Violation]) -> set[str]:
    return {v.field for v in violations}


def describe(violations: list[Violation], path: str) -> str:
    """The descriptions of the violations at ``path`` (fails when there is none)."""
    found = [v.description for v in violations if v.field == path]
    assert found, f"no violation at {path}; got {violations}"
    return " | ".join(found)


def assert_says(violations: list[Violation], path: str, *words: str) -> None:
    """Some violation at ``path`` mentions every one of ``words`` (case-insensitive)."""
    text = describe(violations, path)
    missing = [w for w in words if w.lower() not in text.lower()]
    assert not missing, f"violation at {path} does not mention {missing}: {text!r}"


def only(violations: list[Violation], path: str, *words: str) -> None:
    """Exactly one field is reported, ``path``, and its description mentions ``words``."""
    assert fields(violations) == {path}, violations
    assert_says(violations, path, *words)


def topo(compiled: CompiledGraph, name: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(compiled.topology[name])
    return value


def out_edges(compiled: CompiledGraph, node: str) -> list[list[Any]]:
    """The node's outgoing edges from the topology's text: [index, to, back, owner, single]."""
    text = compiled.topology[">" + node]
    rows = [e.split(",") for e in text.split(";")] if text else []
    return [[int(i), to, int(b), int(o), int(one)] for i, to, b, o, one in rows]


# --- a valid graph ----------------------------------------------------------------------------


def test_diamond_compiles_with_entries_sinks_refs_and_topology(cel: CelCompiler) -> None:
    g = graph(
        [
            tool("a", inputs={"topic": "{{ inputs.topic }}"}),
            tool("b", inputs={"x": "{{ nodes.a.output.x }}", "static": 1}),
            tool("c", output={"y": "result.y + inputs.k"}),
            tool(
                "d",
                join="JOIN_MODE_ANY",
                inputs={"sides": ["{{ nodes.b.output }}", "{{ nodes['c'].output }}"]},
            ),
        ],
        [
            edge("a", "b"),
            edge("a", "c", condition="nodes.a.output.x > 0"),
            edge("b", "d"),
            edge("c", "d"),
        ],
    )
    c = compile_ok(cel, g, {"topic": "t", "k": 2})
    assert c.entries == ["a"]
    assert c.sinks == ["d"]
    assert list(c.nodes) == ["a", "b", "c", "d"]
    assert [n.index for n in c.nodes.values()] == [0, 1, 2, 3]
    assert all(n.kind == "tool" for n in c.nodes.values())

    # What each node reads: its inputs, its output mapping and its outgoing conditions.
    assert c.nodes["b"].refs.nodes == {"a"}
    assert c.nodes["b"].refs.inputs == frozenset()
    assert c.nodes["a"].refs.inputs == {"topic"}
    assert c.nodes["a"].refs.nodes == {"a"}  # the condition of a -> c reads a's output
    assert c.nodes["c"].refs.inputs == {"k"}
    assert c.nodes["d"].refs.nodes == {"b", "c"}
    assert not c.nodes["b"].inputs.is_static
    assert set(c.nodes["c"].output) == {"y"}

    a_out = c.nodes["a"].out_edges
    assert [(e.index, e.to, e.back) for e in a_out] == [(0, "b", False), (1, "c", False)]
    assert a_out[0].condition is None
    assert a_out[1].condition is not None
    assert a_out[1].condition.source == "nodes.a.output.x > 0"

    ta, tb, td = topo(c, "a"), topo(c, "b"), topo(c, "d")
    assert ta[NodeTopology.KIND] == "tool"
    assert (ta[NodeTopology.IN_DEGREE], ta[NodeTopology.JOIN]) == (
        0,
        graph_pb2.JOIN_MODE_UNSPECIFIED,
    )
    assert tb[NodeTopology.IN_DEGREE] == 1
    assert (td[NodeTopology.IN_DEGREE], td[NodeTopology.JOIN]) == (2, graph_pb2.JOIN_MODE_ANY)
    # Outgoing edges as text: index,to,back,owner,single (b and c have one way in, d two).
    assert c.topology[">a"] == "0,b,0,0,1;1,c,0,0,1"
    assert c.topology[">b"] == "2,d,0,0,0"
    assert c.topology[">d"] == ""
    # What starting each node reads (which outputs), its attempt timeout in ms and its
    # inline flag (none here: these options name no inline tool).
    assert c.start_plans == {
        "a": "a|300000|",
        "b": "a|300000|",
        "c": "|300000|",
        "d": "b,c|300000|",
    }
    # The retry policy: attempts, initial and max backoff (ms), multiplier, jitter, retry_on.
    assert ta[NodeTopology.RETRY] == [1, 1000, 60000, 2.0, 0.0, []]
    assert not [k for k in c.topology if k.startswith("b:")], "no loop, no back edge entry"


def test_nodes_naming_an_inline_tool_are_inline_in_their_start_plan(cel: CelCompiler) -> None:
    """Which nodes are inline is decided once, at compile (``CompiledNode.inline``), from
    the tools with an inline form; the start plan carries the decision to the functions."""
    options = CompileOptions(kinds=KINDS, tools={"echo", "sleep"}, inline_tools={"echo"})
    g = graph([tool("a"), tool("s", "sleep"), tool("b")], [edge("a", "s"), edge("s", "b")])
    c = compile_ok(cel, g, options=options)
    assert {n: cn.inline for n, cn in c.nodes.items()} == {"a": True, "s": False, "b": True}
    assert c.start_plans == {
        "a": f"|300000|{StartPlan.INLINE}",
        "s": "|300000|",
        "b": f"|300000|{StartPlan.INLINE}",
    }
    assert not compile_ok(cel, g).nodes["a"].inline  # no tool named inline: none is


def test_root_prefixes_every_path(cel: CelCompiler) -> None:
    v = rejected(cel, graph([tool("a", "nope")]), root="request.graph")
    only(v, "request.graph.nodes[0].tool.name", "nope")


def test_router_compiles_its_routes_in_order(cel: CelCompiler) -> None:
    g = graph(
        [
            tool("a"),
            router(
                "r",
                [
                    {"name": "big", "condition": "input.n > 10"},
                    {"name": "small", "condition": "nodes.a.output.n <= 10"},
                ],
                default="other",
                inputs={"n": "{{ nodes.a.output.n }}"},
            ),
            tool("x"),
            tool("y"),
            tool("z"),
        ],
        [
            edge("a", "r"),
            edge("r", "x", label="big"),
            edge("r", "y", label="small"),
            edge("r", "z", label="other"),
        ],
    )
    c = compile_ok(cel, g)
    r = c.nodes["r"]
    assert r.kind == "router"
    assert [name for name, _ in r.routes] == ["big", "small"]
    assert all(expr is not None for _, expr in r.routes)
    assert r.refs.nodes == {"a"}
    assert c.sinks == ["x", "y", "z"]


# --- every problem at once --------------------------------------------------------------------


def test_every_violation_is_reported_at_once(cel: CelCompiler) -> None:
    g = graph(
        [tool("a"), tool("1bad"), tool("c", "nope"), tool("a")],
        [edge("a", "zz"), edge("a", "c", condition="1 +")],
    )
    v = rejected(cel, g)
    assert fields(v) == {
        "graph.nodes[1].id",
        "graph.nodes[3].id",
        "graph.edges[0].to",
        "graph.nodes[2].tool.name",
        "graph.edges[1].condition",
    }
    assert_says(v, "graph.nodes[1].id", '"1bad"', "not a valid node id")
    assert_says(v, "graph.nodes[3].id", "duplicate", '"a"', "nodes[0]")
    assert_says(v, "graph.edges[0].to", '"zz"')
    assert_says(v, "graph.nodes[2].tool.name", '"nope"', "echo", "sleep")
    assert_says(v, "graph.edges[1].condition", "syntax error")
    assert len(v) == 5, v


def test_a_node_with_a_bad_id_still_gets_its_own_checks(cel: CelCompiler) -> None:
    """The node's id is wrong, and so are its tool and its template: all three are reported
    (per-node problems are reported even when the shape is broken)."""
    g = graph([tool("1bad", "nope", inputs={"x": "{{ 1 + }}"}), tool("a"), tool("a", "nope2")])
    v = rejected(cel, g)
    assert_says(v, "graph.nodes[0].id", "not a valid node id")
    assert_says(v, "graph.nodes[2].id", "duplicate")
    assert_says(v, "graph.nodes[0].tool.name", '"nope"')
    assert_says(v, "graph.nodes[0].inputs.x", "placeholder")
    assert_says(v, "graph.nodes[2].tool.name", '"nope2"')


def test_an_edge_to_an_unknown_node_still_gets_its_condition_checked(cel: CelCompiler) -> None:
    g = graph([tool("a")], [edge("a", "zz", condition="1 +")])
    v = rejected(cel, g)
    assert fields(v) == {"graph.edges[0].to", "graph.edges[0].condition"}, v
    assert_says(v, "graph.edges[0].condition", "syntax error")


def test_edge_from_an_unknown_node_and_duplicate_edges(cel: CelCompiler) -> None:
    g = graph(
        [tool("a"), tool("b")],
        [edge("a", "b"), edge("a", "b", label="other"), edge("zz", "b"), edge("a", "b")],
    )
    v = rejected(cel, g)
    assert fields(v) == {"graph.edges[2].from", "graph.edges[3]"}, v
    assert_says(v, "graph.edges[2].from", '"zz"', "a, b")
    # Same from and to with another label is a different edge; the same triple is not.
    assert_says(v, "graph.edges[3]", "duplicate", "edges[0]")


def test_node_without_a_kind(cel: CelCompiler) -> None:
    only(rejected(cel, graph([{"id": "a"}])), "graph.nodes[0]", "kind", "tool", "router")


def test_agent_fields_and_tool_names_are_checked_with_their_paths(cel: CelCompiler) -> None:
    bad = {
        "id": "b",
        "agent": {
            "llm": {"prompt": "", "outputSchema": {"type": "object"}},
            "tools": ["echo", "shell", "kb/search", "echo"],
            "maxTurns": 5000,
            "toolTimeout": "0s",
        },
    }
    v = rejected(cel, graph([tool("a"), bad], [edge("a", "b")]))
    p = "graph.nodes[1].agent"
    assert fields(v) == {
        f"{p}.llm.prompt",
        f"{p}.llm.output_schema",
        f"{p}.tools[1]",
        f"{p}.tools[2]",
        f"{p}.tools[3]",
        f"{p}.max_turns",
        f"{p}.tool_timeout",
    }, v
    assert_says(v, f"{p}.tools[1]", '"shell"', "echo, sleep")
    assert_says(v, f"{p}.tools[2]", "MCP server", '"kb"', "not configured")
    assert_says(v, f"{p}.tools[3]", "twice")
    # Tools of a configured MCP server are accepted by name (checked when the node runs).
    options = CompileOptions(kinds=KINDS, tools={"echo", "sleep"}, mcp_servers={"kb"})
    ok = {"id": "b", "agent": {"llm": {"prompt": "hi"}, "tools": ["kb/search", "kb/*", "echo"]}}
    compile_graph(graph([ok]), {}, cel, options)


def test_llm_and_http_fields_are_checked_with_their_paths(cel: CelCompiler) -> None:
    bad_llm = {
        "id": "b",
        "llm": {
            "provider": "gemini",
            "prompt": "hi {{ nodes.a.output. }}",
            "temperature": 3,
            "maxTokens": -1,
            "outputSchema": {"type": "object", "properties": {"p": {"type": "nope"}}},
            "messages": [{"role": "system", "content": "x {{ nodes.zz.output }}"}],
        },
    }
    bad_http = {
        "id": "c",
        "http": {"method": "FETCH", "url": "ftp://x", "maxResponseBytes": -5},
    }
    no_prompt = {"id": "d", "llm": {}}
    v = rejected(cel, graph([tool("a"), bad_llm, bad_http, no_prompt]))
    assert_says(v, "graph.nodes[1].llm.provider", "gemini", "anthropic", "openai", "offline")
    assert_says(v, "graph.nodes[1].llm.prompt", "placeholder")
    assert_says(v, "graph.nodes[1].llm.temperature", "between 0 and 2")
    assert_says(v, "graph.nodes[1].llm.max_tokens", "between 0")
    assert_says(v, "graph.nodes[1].llm.output_schema", "not a valid JSON Schema", "properties/p")
    assert_says(v, "graph.nodes[1].llm.messages[0].role", "user", "assistant")
    assert_says(v, "graph.nodes[2].http.method", "GET", "POST")
    assert_says(v, "graph.nodes[2].http.url", "http://")
    assert_says(v, "graph.nodes[2].http.max_response_bytes", "negative")
    assert_says(v, "graph.nodes[3].llm.prompt", "prompt or messages")


def test_llm_templates_are_checked_against_the_graph(cel: CelCompiler) -> None:
    g = graph(
        [
            tool("a"),
            {"id": "b", "llm": {"prompt": "{{ inputs.q }} {{ nodes.c.output }}"}},
            {"id": "c", "http": {"url": "https://example.com/{{ inputs.nope }}"}},
        ],
        [edge("a", "b"), edge("a", "c")],
    )
    v = rejected(cel, g, {"q": 1})
    assert_says(v, "graph.nodes[1].llm.prompt", "nodes.c", "does not run before")
    assert_says(v, "graph.nodes[2].http.url", "inputs.nope")
    ok = graph(
        [tool("a"), {"id": "b", "llm": {"prompt": "{{ inputs.q }} {{ nodes.a.output }}"}}],
        [edge("a", "b")],
    )
    compiled = compile_ok(cel, ok, {"q": 1})
    assert compiled.nodes["b"].refs.nodes == {"a"}
    assert set(compiled.nodes["b"].templates) == {"llm.prompt"}


def test_empty_graph(cel: CelCompiler) -> None:
    only(rejected(cel, graph([])), "graph.nodes", "at least one node")


def test_too_many_nodes_and_edges(cel: CelCompiler) -> None:
    options = CompileOptions(kinds=KINDS, tools={"echo", "sleep"}, max_nodes=3, max_edges=2)
    nodes = [tool(n) for n in "abcd"]
    v = rejected(cel, graph(nodes, [edge("a", "b"), edge("b", "c"), edge("c", "d")]), None, options)
    assert fields(v) == {"graph.nodes", "graph.edges"}, v
    assert_says(v, "graph.nodes", "4 nodes", "limit is 3")
    assert_says(v, "graph.edges", "3 edges", "limit is 2")
    # At the limit is fine.
    compile_ok(cel, graph(nodes[:3], [edge("a", "b"), edge("b", "c")]), None, options)


# --- entry nodes and reachability -------------------------------------------------------------


def test_unreachable_nodes_are_named(cel: CelCompiler) -> None:
    g = graph([tool("a"), tool("b"), tool("c")], [edge("b", "c")], entryNodes=["a"])
    v = rejected(cel, g)
    assert fields(v) == {"graph.nodes[1].id", "graph.nodes[2].id"}, v
    assert_says(v, "graph.nodes[1].id", '"b"', "not reachable", "'a'")
    assert_says(v, "graph.nodes[2].id", '"c"', "not reachable")


@pytest.mark.timeout(5, method="signal")
def test_an_unreachable_cycle_is_reported_not_looped_on(cel: CelCompiler) -> None:
    """b <-> c is never reached from the entry a: the nodes are unreachable, and compiling
    must end (the cycle is never walked from an entry, so none of its edges is a back edge)."""
    g = graph(
        [tool("a"), tool("b", maxIterations=3), tool("c")],
        [edge("b", "c"), edge("c", "b")],
    )
    v = rejected(cel, g)
    assert fields(v) == {"graph.nodes[1].id", "graph.nodes[2].id"}, v
    assert_says(v, "graph.nodes[1].id", '"b"', "not reachable")


def test_no_entry_node_when_every_node_is_in_a_cycle(cel: CelCompiler) -> None:
    g = graph([tool("a", maxIterations=2), tool("b")], [edge("a", "b"), edge("b", "a")])
    only(rejected(cel, g), "graph.entry_nodes", "no start", "entry_nodes")
    # Naming the start fixes it: b -> a closes the loop headed by a.
    g.entry_nodes.append("a")
    c = compile_ok(cel, g)
    assert c.entries == ["a"]
    assert [(e.to, e.back) for e in c.nodes["b"].out_edges] == [("a", True)]


def test_explicit_entry_naming_an_unknown_node(cel: CelCompiler) -> None:
    g = graph([tool("a"), tool("b")], [edge("a", "b")], entryNodes=["a", "zz"])
    only(rejected(cel, g), "graph.entry_nodes[1]", '"zz"')


def test_explicit_entries_replace_the_default_ones(cel: CelCompiler) -> None:
    g = graph([tool("a"), tool("b"), tool("c")], [edge("a", "c"), edge("b", "c")])
    assert compile_ok(cel, g).entries == ["a", "b"]
    g.entry_nodes.extend(["b", "a", "b"])
    assert compile_ok(cel, g).entries == ["b", "a"]


def test_a_self_loop_does_not_hide_an_entry_node(cel: CelCompiler) -> None:
    g = graph([tool("a", maxIterations=3), tool("b")], [edge("a", "a"), edge("a", "b")])
    c = compile_ok(cel, g)
    assert c.entries == ["a"]
    assert [(e.to, e.back) for e in c.nodes["a"].out_edges] == [("a", True), ("b", False)]
    assert topo(c, "a")["in"] == 0
    assert out_edges(c, "a") == [[0, "a", 1, 0, 0], [1, "b", 0, 1, 0]]
    assert topo(c, "b:0") == {"h": "a", "s": "a", "body": ["a"], "ie": [], "x": [[1, "b"]]}
    # ...but another node pointing at it does.
    g2 = graph([tool("s"), tool("a", maxIterations=3)], [edge("s", "a"), edge("a", "a")])
    assert compile_ok(cel, g2).entries == ["s"]


# --- cycles -----------------------------------------------------------------------------------


def test_a_cycle_without_max_iterations_is_rejected(cel: CelCompiler) -> None:
    g = graph([tool("a"), tool("b"), tool("c")], [edge("a", "b"), edge("b", "c"), edge("c", "b")])
    only(
        rejected(cel, g),
        "graph.nodes[1].max_iterations",
        "edges[2]",
        "c -> b",
        "cycle",
        '"b"',
        "max_iterations",
    )


def test_an_unbounded_self_loop_is_rejected(cel: CelCompiler) -> None:
    g = graph([tool("a")], [edge("a", "a")])
    only(rejected(cel, g), "graph.nodes[0].max_iterations", "edges[0]", "a -> a", "cycle")


def test_a_bounded_cycle_compiles_with_its_back_edge(cel: CelCompiler) -> None:
    g = graph(
        [tool("a"), tool("b", maxIterations=3), tool("c"), tool("d")],
        [edge("a", "b"), edge("b", "c"), edge("c", "b", condition="true"), edge("c", "d")],
    )
    c = compile_ok(cel, g)
    assert c.entries == ["a"]
    assert c.sinks == ["d"]
    out = {n: [(e.index, e.to, e.back) for e in cn.out_edges] for n, cn in c.nodes.items()}
    assert out == {
        "a": [(0, "b", False)],
        "b": [(1, "c", False)],
        "c": [(2, "b", True), (3, "d", False)],
        "d": [],
    }
    assert topo(c, "b")["in"] == 1  # the back edge is not a forward in-edge
    assert topo(c, "b")["mx"] == 3
    assert out_edges(c, "c") == [[2, "b", 1, 0, 0], [3, "d", 0, 3, 0]]
    assert topo(c, "d")["in"] == 1
    assert topo(c, "b:2") == {"h": "b", "s": "c", "body": ["b", "c"], "ie": [1], "x": [[3, "d"]]}
    assert sorted(k for k in c.topology if k.startswith("b:")) == ["b:2"]


def test_a_side_entry_into_a_loop_body_is_rejected(cel: CelCompiler) -> None:
    g = graph(
        [tool("a"), tool("b", maxIterations=3), tool("c")],
        [edge("a", "b"), edge("b", "c"), edge("c", "b"), edge("a", "c")],
    )
    only(rejected(cel, g), "graph.edges[3]", "enters the loop", '"b"', '"c"', "head")


def test_an_entry_node_inside_a_loop_body_is_rejected(cel: CelCompiler) -> None:
    """Starting at c enters the loop b -> c -> b at c, not at its head b."""
    g = graph(
        [tool("a"), tool("b", maxIterations=3), tool("c")],
        [edge("a", "b"), edge("b", "c"), edge("c", "b")],
        entryNodes=["a", "c"],
    )
    v = rejected(cel, g)
    assert_says(v, "graph.entry_nodes[1]", "loop", "head")


def test_nested_loops_exit_edges_belong_to_the_outermost_loop_they_leave(
    cel: CelCompiler,
) -> None:
    # s -> h1 -> h2 -> w; w -> h2 closes the inner loop, w -> t -> h1 the outer one;
    # w -> t leaves only the inner loop, w -> out leaves both.
    g = graph(
        [
            tool("s"),
            tool("h1", maxIterations=3),
            tool("h2", maxIterations=2),
            tool("w"),
            tool("t"),
            tool("out"),
        ],
        [
            edge("s", "h1"),  # 0
            edge("h1", "h2"),  # 1
            edge("h2", "w"),  # 2
            edge("w", "h2"),  # 3 inner back edge
            edge("w", "t"),  # 4 exits the inner loop
            edge("t", "h1"),  # 5 outer back edge
            edge("w", "out"),  # 6 exits both
        ],
    )
    c = compile_ok(cel, g)
    assert c.sinks == ["out"]
    assert [e.index for cn in c.nodes.values() for e in cn.out_edges if e.back] == [3, 5]
    assert topo(c, "b:3") == {"h": "h2", "s": "w", "body": ["h2", "w"], "ie": [2], "x": [[4, "t"]]}
    assert topo(c, "b:5") == {
        "h": "h1",
        "s": "t",
        "body": ["h1", "h2", "t", "w"],
        "ie": [1, 2, 4],
        "x": [[6, "out"]],
    }
    # The 4th element of an out edge: the owning loop's back-edge index + 1 (0: not an exit).
    assert out_edges(c, "w") == [[3, "h2", 1, 0, 0], [4, "t", 0, 4, 0], [6, "out", 0, 6, 0]]
    assert out_edges(c, "s") == [[0, "h1", 0, 0, 2]]  # into a loop: its iteration is read
    assert out_edges(c, "t") == [[5, "h1", 1, 0, 0]]
    assert {n: topo(c, n)["in"] for n in c.nodes} == {
        "s": 0,
        "h1": 1,
        "h2": 1,
        "w": 1,
        "t": 1,
        "out": 1,
    }


def test_sinks_of_graphs_that_end_in_a_loop(cel: CelCompiler) -> None:
    """The graph's default result is the outputs of its sinks: a node whose only outgoing
    edges close loops is where the graph ends, so it is a sink."""
    c = compile_ok(cel, graph([tool("poll", maxIterations=3)], [edge("poll", "poll")]))
    assert c.sinks == ["poll"]
    g = graph(
        [tool("a"), tool("h", maxIterations=3), tool("t")],
        [edge("a", "h"), edge("h", "t"), edge("t", "h")],
    )
    assert compile_ok(cel, g).sinks == ["t"]


# --- templates --------------------------------------------------------------------------------


def test_template_reference_to_a_missing_input(cel: CelCompiler) -> None:
    g = graph([tool("a", inputs={"text": "{{ inputs.nope }}", "ok": "{{ inputs.a }}"})])
    only(
        rejected(cel, g, {"a": 1}),
        "graph.nodes[0].inputs.text",  # the key's path, not just the inputs'
        'node "a" references inputs.nope',
        '"nope"',
        "'a'",
    )
    assert compile_ok(cel, g, {"a": 1, "nope": 2}).nodes["a"].refs.inputs == {"a", "nope"}


def test_template_references_are_reported_at_each_keys_path_with_the_nearest_name(
    cel: CelCompiler,
) -> None:
    # Each key that reads what does not exist, at its own path (nested keys, list items,
    # odd keys), naming the node by id and the nearest valid name.
    g = graph(
        [
            tool("a"),
            tool(
                "b",
                inputs={
                    "title": "{{ inputs.titel }}",
                    "fine": "{{ inputs.title }}",
                    "deep": {"items": ["x", "n: {{ nodes.aa.output }}"]},
                    "odd key": "{{ inputs.nope }}",
                },
            ),
        ],
        [edge("a", "b")],
    )
    violations = rejected(cel, g, {"title": "t"})
    assert fields(violations) == {
        "graph.nodes[1].inputs.title",
        "graph.nodes[1].inputs.deep.items[1]",
        'graph.nodes[1].inputs["odd key"]',
    }, violations
    assert_says(
        violations, "graph.nodes[1].inputs.title", 'node "b"', "inputs.titel", 'mean "title"'
    )
    assert_says(violations, "graph.nodes[1].inputs.deep.items[1]", "nodes.aa", 'mean "a"')


def test_template_reference_to_a_node_that_is_not_upstream(cel: CelCompiler) -> None:
    g = graph([tool("a"), tool("b", inputs={"x": "{{ nodes.a.output.x }}"})])
    only(rejected(cel, g), "graph.nodes[1].inputs.x", "nodes.a", 'node "b"', "from a to b")
    add_edge(g, "a", "b")
    assert compile_ok(cel, g).nodes["b"].refs.nodes == {"a"}


def test_template_reference_to_an_ancestor_further_up(cel: CelCompiler) -> None:
    g = graph(
        [tool("a"), tool("b"), tool("c", inputs={"x": "{{ nodes.a.output }}"})],
        [edge("a", "b"), edge("b", "c")],
    )
    assert compile_ok(cel, g).nodes["c"].refs.nodes == {"a"}


def test_template_reference_to_an_unknown_node(cel: CelCompiler) -> None:
    g = graph([tool("a", inputs={"x": "{{ nodes.zz.output }}"})])
    only(rejected(cel, g), "graph.nodes[0].inputs.x", "nodes.zz", '"zz"', 'node "a"')


def test_template_reference_to_itself_outside_a_loop(cel: CelCompiler) -> None:
    g = graph([tool("a", inputs={"x": "{{ nodes.a.output }}"})])
    only(rejected(cel, g), "graph.nodes[0].inputs.x", "nodes.a", '"a"')


def test_template_reference_to_itself_inside_a_loop(cel: CelCompiler) -> None:
    # The loop example: a node reads its previous iteration's output.
    g = graph(
        [
            tool(
                "poll",
                maxIterations=10,
                inputs={"n": "{{ has(nodes.poll) ? nodes.poll.output.n + 1 : 1 }}"},
            ),
            tool("done", inputs={"n": "{{ nodes.poll.output.n }}"}),
        ],
        [
            edge("poll", "poll", condition="nodes.poll.output.n < inputs.until"),
            edge("poll", "done", condition="nodes.poll.output.n >= inputs.until"),
        ],
    )
    c = compile_ok(cel, g, {"until": 3})
    assert c.nodes["poll"].refs.nodes == {"poll"}
    assert c.nodes["poll"].refs.inputs == {"until"}
    # A loop head may also read a later node of its own loop body.
    g2 = graph(
        [
            tool("h", maxIterations=3, inputs={"prev": "{{ nodes.?t.output.orValue(0) }}"}),
            tool("t"),
        ],
        [edge("h", "t"), edge("t", "h")],
        entryNodes=["h"],
    )
    assert compile_ok(cel, g2).nodes["h"].refs.nodes == {"t"}


def test_a_node_before_a_loop_cannot_read_the_loop(cel: CelCompiler) -> None:
    g = graph(
        [tool("a", inputs={"x": "{{ nodes.t.output }}"}), tool("h", maxIterations=3), tool("t")],
        [edge("a", "h"), edge("h", "t"), edge("t", "h")],
    )
    only(rejected(cel, g), "graph.nodes[0].inputs.x", "nodes.t", '"a"')


def test_unterminated_placeholder_is_located_inside_the_inputs(cel: CelCompiler) -> None:
    g = graph([tool("a", inputs={"x": {"y": ["fine", "{{ inputs.a"]}})])
    only(rejected(cel, g, {"a": 1}), "graph.nodes[0].inputs.x.y[1]", "unterminated", "{{")
    g = graph([tool("a", inputs={"text": "hello {{ inputs.a"})])
    only(rejected(cel, g, {"a": 1}), "graph.nodes[0].inputs.text", "unterminated")


def test_placeholder_that_is_not_valid_cel(cel: CelCompiler) -> None:
    g = graph([tool("a"), tool("b", inputs={"text": "x={{ nodes.a.output + }}"})], [edge("a", "b")])
    only(rejected(cel, g), "graph.nodes[1].inputs.text", "placeholder", "syntax error")


def test_edge_condition_reading_a_node_that_has_not_run(cel: CelCompiler) -> None:
    g = graph(
        [tool("a"), tool("b"), tool("c")],
        [edge("a", "b", condition="nodes.c.output.ok")],
        entryNodes=["a", "c"],
    )
    only(rejected(cel, g), "graph.edges[0].condition", "nodes.c", '"a"')


def test_graph_output_reading_an_unknown_node(cel: CelCompiler) -> None:
    g = graph([tool("a")], output={"r": "nodes.zz.output", "ok": "nodes.a.output"})
    only(rejected(cel, g), "graph.output[r]", "nodes.zz", '"zz"')


# --- CEL scopes -------------------------------------------------------------------------------


def test_input_is_not_a_variable_of_edge_conditions(cel: CelCompiler) -> None:
    g = graph([tool("a"), tool("b")], [edge("a", "b", condition="input.x == 1")])
    only(rejected(cel, g), "graph.edges[0].condition", "'input'", "inputs, nodes, graph")


def test_result_in_node_output_but_not_in_graph_output(cel: CelCompiler) -> None:
    ok = graph([tool("a", output={"y": "result.x + input.k"})], output={"o": "nodes.a.output.y"})
    c = compile_ok(cel, ok)
    assert set(c.nodes["a"].output) == {"y"}
    assert set(c.output) == {"o"}
    bad = graph([tool("a")], output={"o": "result.x"})
    only(rejected(cel, bad), "graph.output[o]", "'result'", "inputs, nodes, graph")
    bad_node = graph([tool("a", output={"y": "nope.x"})])
    only(rejected(cel, bad_node), "graph.nodes[0].output[y]", "'nope'", "result")


def test_input_in_route_conditions(cel: CelCompiler) -> None:
    g = graph(
        [router("r", [{"name": "x", "condition": "input.n > 1"}], inputs={"n": 2}), tool("b")],
        [edge("r", "b", label="x")],
    )
    assert [name for name, _ in compile_ok(cel, g).nodes["r"].routes] == ["x"]
    g.nodes[0].router.routes[0].condition = "result.n > 1"
    only(rejected(cel, g), "graph.nodes[0].router.routes[0].condition", "'result'", "input")


# --- routers ----------------------------------------------------------------------------------


def test_router_without_routes(cel: CelCompiler) -> None:
    g = graph([router("r", [], default="d"), tool("d")], [edge("r", "d", label="d")])
    only(rejected(cel, g), "graph.nodes[0].router.routes", "at least one route")


def test_router_with_duplicate_route_names(cel: CelCompiler) -> None:
    routes = [{"name": "x", "condition": "true"}, {"name": "x", "condition": "false"}]
    g = graph([router("r", routes), tool("b")], [edge("r", "b", label="x")])
    only(rejected(cel, g), "graph.nodes[0].router.routes[1].name", "duplicate", '"x"')


def test_router_route_names_must_be_usable_labels(cel: CelCompiler) -> None:
    g = graph([router("r", [{"name": "a b", "condition": "true"}]), tool("b")])
    add_edge(g, "r", "b", label="a b")
    only(rejected(cel, g), "graph.nodes[0].router.routes[0].name", "letters")


def test_deterministic_route_without_a_condition(cel: CelCompiler) -> None:
    for mode in ("", "ROUTER_MODE_DETERMINISTIC"):
        routes = [{"name": "x"}, {"name": "y", "condition": "true"}]
        g = graph(
            [router("r", routes, mode=mode), tool("b"), tool("c")],
            [edge("r", "b", label="x"), edge("r", "c", label="y")],
        )
        only(rejected(cel, g), "graph.nodes[0].router.routes[0].condition", "deterministic", "CEL")


def test_edges_leaving_a_router_carry_a_route_name(cel: CelCompiler) -> None:
    g = graph(
        [
            router("r", [{"name": "x", "condition": "true"}], default="fallback"),
            tool("b"),
            tool("c"),
            tool("d"),
            tool("e"),
        ],
        [
            edge("r", "b", label="x"),
            edge("r", "c", label="nope"),
            edge("r", "d", label="fallback"),  # the default route counts as a route
            edge("r", "e"),  # no label at all
        ],
    )
    v = rejected(cel, g)
    assert fields(v) == {"graph.edges[1].label", "graph.edges[3].label"}, v
    assert_says(v, "graph.edges[1].label", '"r"', '"nope"', "'fallback'", "'x'")
    del g.edges[3]
    del g.edges[1]
    c = compile_ok(cel, g)
    assert [(e.to, e.label) for e in c.nodes["r"].out_edges] == [("b", "x"), ("d", "fallback")]


def test_model_driven_router_modes_are_checked(cel: CelCompiler) -> None:
    routes = [{"name": "x", "condition": "true", "description": "the x team"}]
    g = graph([router("r", routes, mode="ROUTER_MODE_LLM")])
    g.nodes[0].router.llm.prompt = "{{ inputs.q }}"
    g.nodes[0].router.llm.output_schema.update({"type": "object"})
    g.nodes[0].router.llm.temperature = 5
    v = rejected(cel, g)
    assert_says(v, "graph.nodes[0].router.routes[0].condition", "ROUTER_MODE_HYBRID")
    assert_says(v, "graph.nodes[0].router.llm.output_schema", "leave it unset")
    assert_says(v, "graph.nodes[0].router.llm.temperature", "between 0 and 2")
    ok = graph(
        [
            router(
                "r",
                [{"name": "x"}, {"name": "y", "condition": "input.n > 1"}],
                mode="ROUTER_MODE_HYBRID",
            ),
            tool("b"),
            tool("c"),
        ],
        [edge("r", "b", label="x"), edge("r", "c", label="y")],
    )
    compile_ok(cel, ok)


# --- retry policies, timeouts and limits ------------------------------------------------------

RANGE_CASES: list[tuple[dict[str, Any], dict[str, Any], str, tuple[str, ...]]] = [
    # (node fields, graph fields, path, words)
    ({"retry": {"maxAttempts": 101}}, {}, "graph.nodes[0].retry.max_attempts", ("0", "100")),
    ({"retry": {"maxAttempts": -1}}, {}, "graph.nodes[0].retry.max_attempts", ("0", "100")),
    ({"retry": {"jitter": -0.1}}, {}, "graph.nodes[0].retry.jitter", ("between 0 and 1",)),
    ({"retry": {"jitter": 1.5}}, {}, "graph.nodes[0].retry.jitter", ("between 0 and 1",)),
    (
        {"retry": {"initialBackoff": "5s", "maxBackoff": "1s"}},
        {},
        "graph.nodes[0].retry.max_backoff",
        ("initial_backoff",),
    ),
    ({"retry": {"initialBackoff": "-1s"}}, {}, "graph.nodes[0].retry.initial_backoff", ("24",)),
    ({"retry": {"maxBackoff": "86401s"}}, {}, "graph.nodes[0].retry.max_backoff", ("24 hours",)),
    (
        {"retry": {"backoffMultiplier": 0.5}},
        {},
        "graph.nodes[0].retry.backoff_multiplier",
        ("1", "100"),
    ),
    (
        {"retry": {"backoffMultiplier": 101}},
        {},
        "graph.nodes[0].retry.backoff_multiplier",
        ("1", "100"),
    ),
    ({"attemptTimeout": "0s"}, {}, "graph.nodes[0].attempt_timeout", ("positive",)),
    ({"attemptTimeout": "-3s"}, {}, "graph.nodes[0].attempt_timeout", ("positive",)),
    ({"attemptTimeout": "2592001s"}, {}, "graph.nodes[0].attempt_timeout", ("30 days",)),
    ({"maxIterations": -1}, {}, "graph.nodes[0].max_iterations", ("10000",)),
    ({"maxIterations": 10001}, {}, "graph.nodes[0].max_iterations", ("10000",)),
    ({}, {"limits": {"deadline": "-1s"}}, "graph.limits.deadline", ("positive",)),
    ({}, {"limits": {"deadline": "0s"}}, "graph.limits.deadline", ("positive",)),
    ({}, {"limits": {"maxSteps": -1}}, "graph.limits.max_steps", ("negative",)),
    ({}, {"limits": {"maxTokens": -1}}, "graph.limits.max_tokens", ("negative",)),
    ({}, {"limits": {"maxCostUsd": -0.01}}, "graph.limits.max_cost_usd", ("non-negative",)),
    ({}, {"limits": {"maxCostUsd": "NaN"}}, "graph.limits.max_cost_usd", ("non-negative",)),
    (
        {},
        {"defaults": {"retry": {"maxAttempts": 101}}},
        "graph.defaults.retry.max_attempts",
        ("100",),
    ),
    ({}, {"defaults": {"retry": {"jitter": 2}}}, "graph.defaults.retry.jitter", ("0 and 1",)),
    ({}, {"defaults": {"attemptTimeout": "0s"}}, "graph.defaults.attempt_timeout", ("positive",)),
]


@pytest.mark.parametrize(
    ("node_fields", "graph_fields", "path", "words"),
    RANGE_CASES,
    ids=[f"{case[2].removeprefix('graph.')}={i}" for i, case in enumerate(RANGE_CASES)],
)
def test_out_of_range_settings(
    cel: CelCompiler,
    node_fields: dict[str, Any],
    graph_fields: dict[str, Any],
    path: str,
    words: tuple[str, ...],
) -> None:
    only(rejected(cel, graph([tool("a", **node_fields)], **graph_fields)), path, *words)


def test_range_violations_are_reported_each_at_its_own_path(cel: CelCompiler) -> None:
    retry = {
        "maxAttempts": 101,
        "jitter": -0.5,
        "initialBackoff": "10s",
        "maxBackoff": "2s",
        "backoffMultiplier": 0.5,
    }
    g = graph(
        [tool("a"), tool("b", retry=retry, attemptTimeout="0s")],
        [edge("a", "b")],
        limits={"deadline": "0s", "maxSteps": -1, "maxCostUsd": -1},
    )
    assert fields(rejected(cel, g)) == {
        "graph.nodes[1].retry.max_attempts",
        "graph.nodes[1].retry.jitter",
        "graph.nodes[1].retry.max_backoff",
        "graph.nodes[1].retry.backoff_multiplier",
        "graph.nodes[1].attempt_timeout",
        "graph.limits.deadline",
        "graph.limits.max_steps",
        "graph.limits.max_cost_usd",
    }


def test_range_boundaries_are_accepted(cel: CelCompiler) -> None:
    g = graph(
        [
            tool(
                "a",
                maxIterations=10000,
                attemptTimeout="2592000s",
                retry={
                    "maxAttempts": 100,
                    "jitter": 1,
                    "initialBackoff": "0s",
                    "maxBackoff": "86400s",
                    "backoffMultiplier": 100,
                },
            ),
            tool("b", attemptTimeout="0.001s", retry={"jitter": 0, "backoffMultiplier": 1}),
            tool(
                "c",
                retry={"initialBackoff": "3s", "maxBackoff": "3s", "backoffMultiplier": 0},
            ),
        ],
        limits={"deadline": "1s", "maxSteps": 0, "maxTokens": 0, "maxCostUsd": 0},
    )
    compile_ok(cel, g)


# --- effective retry policy and attempt timeout -----------------------------------------------


def test_no_retry_policy_anywhere_gives_the_built_in_defaults(cel: CelCompiler) -> None:
    c = compile_ok(cel, graph([tool("a")]))
    assert c.nodes["a"].retry == Retry(
        max_attempts=1,
        initial_backoff=1.0,
        max_backoff=60.0,
        multiplier=2.0,
        jitter=0.0,
        retry_on=frozenset(),
    )
    assert c.nodes["a"].attempt_timeout == OPTIONS.default_attempt_timeout


def test_graph_defaults_apply_to_nodes_without_a_retry_policy(cel: CelCompiler) -> None:
    defaults = {
        "retry": {
            "maxAttempts": 4,
            "initialBackoff": "0.25s",
            "maxBackoff": "8s",
            "backoffMultiplier": 3,
            "jitter": 0.2,
            "retryOn": ["ERROR_CLASS_TIMEOUT", "ERROR_CLASS_RATE_LIMITED"],
        }
    }
    c = compile_ok(cel, graph([tool("a")], defaults=defaults))
    assert c.nodes["a"].retry == Retry(
        max_attempts=4,
        initial_backoff=0.25,
        max_backoff=8.0,
        multiplier=3.0,
        jitter=0.2,
        retry_on=frozenset({graph_pb2.ERROR_CLASS_TIMEOUT, graph_pb2.ERROR_CLASS_RATE_LIMITED}),
    )
    timeout, rate_limited = graph_pb2.ERROR_CLASS_TIMEOUT, graph_pb2.ERROR_CLASS_RATE_LIMITED
    assert topo(c, "a")[NodeTopology.RETRY] == [4, 250, 8000, 3.0, 0.2, [timeout, rate_limited]]


def test_a_node_retry_policy_overrides_the_graph_defaults(cel: CelCompiler) -> None:
    defaults = {
        "retry": {
            "maxAttempts": 4,
            "initialBackoff": "0.25s",
            "maxBackoff": "8s",
            "backoffMultiplier": 3,
            "jitter": 0.2,
            "retryOn": ["ERROR_CLASS_TIMEOUT"],
        }
    }
    own = {
        "maxAttempts": 7,
        "initialBackoff": "2s",
        "maxBackoff": "30s",
        "backoffMultiplier": 1.5,
        "jitter": 0.5,
        "retryOn": ["ERROR_CLASS_TRANSIENT"],
    }
    # A node that sets only some fields takes the others from the defaults.
    partial = {"maxAttempts": 2}
    c = compile_ok(
        cel,
        graph([tool("a", retry=own), tool("b", retry=partial), tool("c")], defaults=defaults),
    )
    assert c.nodes["a"].retry == Retry(
        max_attempts=7,
        initial_backoff=2.0,
        max_backoff=30.0,
        multiplier=1.5,
        jitter=0.5,
        retry_on=frozenset({graph_pb2.ERROR_CLASS_TRANSIENT}),
    )
    assert c.nodes["b"].retry == Retry(
        max_attempts=2,
        initial_backoff=0.25,
        max_backoff=8.0,
        multiplier=3.0,
        jitter=0.2,
        retry_on=frozenset({graph_pb2.ERROR_CLASS_TIMEOUT}),
    )
    assert c.nodes["c"].retry.max_attempts == 4
    transient, timeout = graph_pb2.ERROR_CLASS_TRANSIENT, graph_pb2.ERROR_CLASS_TIMEOUT
    assert topo(c, "a")[NodeTopology.RETRY] == [7, 2000, 30000, 1.5, 0.5, [transient]]
    assert topo(c, "b")[NodeTopology.RETRY] == [2, 250, 8000, 3.0, 0.2, [timeout]]


def test_attempt_timeout_precedence(cel: CelCompiler) -> None:
    options = CompileOptions(kinds=KINDS, tools={"echo"}, default_attempt_timeout=42.0)
    nodes = [tool("own", attemptTimeout="7.5s"), tool("none")]
    c = compile_ok(cel, graph(nodes, defaults={"attemptTimeout": "20s"}), None, options)
    assert c.nodes["own"].attempt_timeout == 7.5  # the node's own
    assert c.nodes["none"].attempt_timeout == 20.0  # the graph's defaults
    c = compile_ok(cel, graph(nodes), None, options)
    assert c.nodes["own"].attempt_timeout == 7.5
    assert c.nodes["none"].attempt_timeout == 42.0  # the server's setting
