"""Validation and compilation of a submitted graph.

``compile_graph`` is the single place that decides whether a graph is
acceptable. It returns a ``CompiledGraph``: the graph's shape (forward edges,
loop back edges, loop bodies), its compiled CEL and templates, and the
per-node topology the Lua scripts read. The API server runs it at submit
time; workers run it again (cached per graph) to evaluate templates and
conditions, so both always agree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from dago.config import LLM_PROVIDERS
from dago.engine.cel import CelCompiler, Expression, Refs, Scope, Template
from dago.engine.checker import Checker, GraphInvalid
from dago.engine.model import CompiledGraph, CompiledNode, CompileOptions, OutEdge
from dago.engine.retry import check_retry, effective_retry, seconds
from dago.engine.schema import schema_problem
from dago.engine.shape import Edge, Shape, check_loops, reachable
from dago.engine.topology import topology
from dago.store.values import to_plain
from dago.v1 import graph_pb2

NODE_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
ROUTE_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
SUPPORTED_KINDS = frozenset({"tool", "router", "llm", "http", "agent"})
MAX_AGENT_TURNS = 1000
MAX_LLM_TOKENS = 1_000_000
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
MAX_ITERATIONS = 10_000
MAX_DURATION_S = 30 * 24 * 3600


def compile_graph(
    graph: graph_pb2.Graph,
    inputs: Mapping[str, Any],
    cel: CelCompiler,
    options: CompileOptions,
    root: str = "graph",
) -> CompiledGraph:
    """Validate ``graph`` and compile it; raises GraphInvalid listing every problem.

    ``inputs`` are the run's inputs (to check that templates name inputs that
    exist); ``root`` is the field path of the graph in the request.
    """
    chk = Checker()
    ids = _check_nodes(graph, options, chk, root)
    edges = _check_edges(graph, ids, options, chk, root)
    entries = _entries(graph, ids, edges, chk, root)
    # Per-node checks need no graph shape, so they run even when the shape is broken:
    # the client sees every problem at once.
    compiled = _compile_nodes(graph, ids, edges, cel, options, chk, root)
    output = {}
    for name, src in graph.output.items():
        expr = chk.compile(cel, src, Scope.GRAPH_OUTPUT, f"{root}.output[{name}]")
        if expr is not None:
            output[name] = expr
    if chk.violations:
        raise GraphInvalid(chk.violations)

    reached = reachable(entries, edges)
    for nid in ids:
        if nid not in reached:
            chk.add(
                f"{root}.nodes[{ids[nid]}].id",
                f'node "{nid}" is not reachable from the entry nodes {entries}',
            )
    # The shape analysis assumes every cycle is reached from an entry: stop here if not.
    if chk.violations:
        raise GraphInvalid(chk.violations)
    shape = Shape.build(list(ids), edges, entries)
    check_loops(graph, ids, edges, shape, chk, root)
    heads = {idx: to for _, to, idx in edges if idx in shape.back}
    for i, nid in enumerate(entries):
        for b, body in shape.bodies.items():
            head = heads[b]
            if nid in body and nid != head:
                chk.add(
                    f"{root}.entry_nodes[{i}]" if graph.entry_nodes else f"{root}.entry_nodes",
                    f'"{nid}" is inside the loop headed by "{head}"; a loop can only be '
                    "entered at its head",
                )
    _check_refs(ids, compiled, output, shape, inputs, chk, root)
    if chk.violations:
        raise GraphInvalid(chk.violations)
    for cn in compiled.values():
        cn.out_edges = [replace(oe, back=oe.index in shape.back) for oe in cn.out_edges]

    # A graph may end in a loop: a node whose only way on closes a loop is a sink, unless
    # that loop has a way out (then the nodes after it are the sinks).
    leaving = {
        b
        for b, body in shape.bodies.items()
        if any(src in body and to not in body for src, to, idx in edges if idx not in shape.back)
    }
    closes_open_loop = {src for src, _, idx in edges if idx in leaving}
    sinks = [n for n in ids if not shape.forward_out[n] and n not in closes_open_loop]
    return CompiledGraph(
        proto=graph,
        nodes=compiled,
        entries=entries,
        topology=topology(compiled, edges, shape),
        output=output,
        sinks=sinks,
    )


def _check_nodes(
    graph: graph_pb2.Graph, options: CompileOptions, chk: Checker, root: str
) -> dict[str, int]:
    ids: dict[str, int] = {}
    if not graph.nodes:
        chk.add(f"{root}.nodes", "a graph needs at least one node")
    if len(graph.nodes) > options.max_nodes:
        chk.add(f"{root}.nodes", f"{len(graph.nodes)} nodes; the limit is {options.max_nodes}")
    for i, node in enumerate(graph.nodes):
        path = f"{root}.nodes[{i}]"
        if not NODE_ID.match(node.id):
            chk.add(
                f"{path}.id",
                f'"{node.id}" is not a valid node id: use 1-64 letters, digits or _, '
                "starting with a letter or _ (ids are CEL identifiers: nodes.<id>.output)",
            )
        elif node.id in ids:
            chk.add(f"{path}.id", f'duplicate node id "{node.id}" (also nodes[{ids[node.id]}])')
        else:
            ids[node.id] = i
        kind = node.WhichOneof("kind")
        if kind is None:
            chk.add(path, "a node needs a kind: one of llm, agent, tool, http, router")
        elif kind not in SUPPORTED_KINDS:
            chk.add(f"{path}.{kind}", f"the {kind} node kind is not available on this server yet")
        if not 0 <= node.max_iterations <= MAX_ITERATIONS:
            chk.add(f"{path}.max_iterations", f"must be between 0 and {MAX_ITERATIONS}")
        check_retry(node.retry, f"{path}.retry", chk)
        if node.HasField("attempt_timeout"):
            _check_duration(node.attempt_timeout, f"{path}.attempt_timeout", chk)
    check_retry(graph.defaults.retry, f"{root}.defaults.retry", chk)
    if graph.defaults.HasField("attempt_timeout"):
        _check_duration(graph.defaults.attempt_timeout, f"{root}.defaults.attempt_timeout", chk)
    lim = graph.limits
    if lim.max_steps < 0:
        chk.add(f"{root}.limits.max_steps", "must not be negative")
    if lim.max_tokens < 0:
        chk.add(f"{root}.limits.max_tokens", "must not be negative")
    if lim.max_cost_usd < 0 or lim.max_cost_usd != lim.max_cost_usd:
        chk.add(f"{root}.limits.max_cost_usd", "must be a non-negative number")
    if lim.HasField("deadline"):
        _check_duration(lim.deadline, f"{root}.limits.deadline", chk)
    return ids


def _check_duration(d: Any, path: str, chk: Checker) -> None:
    s = seconds(d)
    if s <= 0:
        chk.add(path, "must be positive")
    elif s > MAX_DURATION_S:
        chk.add(path, "must be at most 30 days")


def _check_edges(
    graph: graph_pb2.Graph,
    ids: Mapping[str, int],
    options: CompileOptions,
    chk: Checker,
    root: str,
) -> list[Edge]:
    if len(graph.edges) > options.max_edges:
        chk.add(f"{root}.edges", f"{len(graph.edges)} edges; the limit is {options.max_edges}")
    seen: dict[tuple[str, str, str], int] = {}
    out: list[Edge] = []
    for i, e in enumerate(graph.edges):
        path = f"{root}.edges[{i}]"
        ok = True
        for end in ("from", "to"):
            ref = getattr(e, end)
            if ref not in ids:
                ok = False
                known = ", ".join(sorted(ids)[:20])
                chk.add(f"{path}.{end}", f'no node has id "{ref}" (nodes: {known})')
        key = (e.__getattribute__("from"), e.to, e.label)
        if ok and key in seen:
            chk.add(path, f"duplicate of edges[{seen[key]}] (same from, to and label)")
        elif ok:
            seen[key] = i
            out.append((key[0], key[1], i))
    return out


def _entries(
    graph: graph_pb2.Graph,
    ids: Mapping[str, int],
    edges: list[Edge],
    chk: Checker,
    root: str,
) -> list[str]:
    if graph.entry_nodes:
        for i, nid in enumerate(graph.entry_nodes):
            if nid not in ids:
                chk.add(f"{root}.entry_nodes[{i}]", f'no node has id "{nid}"')
        return list(dict.fromkeys(graph.entry_nodes))
    # A self-loop does not make a node a successor of anything else.
    targets = {to for src, to, _ in edges if src != to}
    entries = [nid for nid in ids if nid not in targets]
    if ids and not entries:
        chk.add(
            f"{root}.entry_nodes",
            "every node has an incoming edge from another node, so the graph has no start: "
            "name the first node(s) in entry_nodes",
        )
    return entries


def _compile_nodes(
    graph: graph_pb2.Graph,
    ids: Mapping[str, int],
    edges: list[Edge],
    cel: CelCompiler,
    options: CompileOptions,
    chk: Checker,
    root: str,
) -> dict[str, CompiledNode]:
    out_edges: dict[str, list[OutEdge]] = {nid: [] for nid in ids}
    valid = {idx for _, _, idx in edges}
    # Conditions of edges with a bad end are still checked: the client sees every problem.
    for idx, e in enumerate(graph.edges):
        cond = None
        if e.condition:
            cond = chk.compile(cel, e.condition, Scope.CONDITION, f"{root}.edges[{idx}].condition")
        if idx in valid:
            out_edges[e.__getattribute__("from")].append(OutEdge(idx, e.to, cond, e.label, False))

    compiled: dict[str, CompiledNode] = {}
    for i, node in enumerate(graph.nodes):
        # Nodes with a bad or duplicate id are checked too, but not kept.
        nid = node.id if ids.get(node.id) == i else ""
        path = f"{root}.nodes[{i}]"
        kind = node.WhichOneof("kind") or ""
        value = to_plain(node.inputs) if node.HasField("inputs") else {}
        tmpl = chk.template(cel, value, Scope.TEMPLATE, f"{path}.inputs")
        output = {}
        for name, src in node.output.items():
            expr = chk.compile(cel, src, Scope.OUTPUT, f"{path}.output[{name}]")
            if expr is not None:
                output[name] = expr
        routes: list[tuple[str, Expression | None]] = []
        if kind == "tool":
            problem = _tool_problem(node.tool.name, options)
            if problem:
                chk.add(f"{path}.tool.name", problem)
        templates: dict[str, Template] = {}
        if kind == "router":
            routes = _compile_router(node, out_edges.get(nid, []), cel, chk, path, root)
            if node.router.mode in (graph_pb2.ROUTER_MODE_LLM, graph_pb2.ROUTER_MODE_HYBRID):
                templates = _compile_llm(node.router.llm, cel, chk, path, "router.llm", True)
        elif kind == "llm":
            templates = _compile_llm(node.llm, cel, chk, path)
        elif kind == "http":
            templates = _compile_http(node.http, cel, chk, path)
        elif kind == "agent":
            templates = _compile_agent(node.agent, options, cel, chk, path)
        timeout = options.default_attempt_timeout
        if node.HasField("attempt_timeout"):
            timeout = seconds(node.attempt_timeout)
        elif graph.defaults.HasField("attempt_timeout"):
            timeout = seconds(graph.defaults.attempt_timeout)
        if tmpl is None or not nid:
            continue
        compiled[nid] = CompiledNode(
            id=nid,
            index=i,
            kind=kind,
            proto=node,
            inputs=tmpl,
            output=output,
            out_edges=out_edges[nid],
            routes=routes,
            retry=effective_retry(node, graph),
            attempt_timeout=timeout,
            templates=templates,
        )
    for cn in compiled.values():
        refs = cn.inputs.refs
        for expr in cn.output.values():
            refs = refs.union(expr.refs)
        for oe in cn.out_edges:
            if oe.condition is not None:
                refs = refs.union(oe.condition.refs)
        for _, rexpr in cn.routes:
            if rexpr is not None:
                refs = refs.union(rexpr.refs)
        for t in cn.templates.values():
            refs = refs.union(t.refs)
        cn.refs = refs
    return compiled


def _compile_router(
    node: graph_pb2.Node,
    edges: list[OutEdge],
    cel: CelCompiler,
    chk: Checker,
    path: str,
    root: str,
) -> list[tuple[str, Expression | None]]:
    r = node.router
    if not r.routes:
        chk.add(f"{path}.router.routes", "a router needs at least one route")
    routes: list[tuple[str, Expression | None]] = []
    names: set[str] = set()
    for j, route in enumerate(r.routes):
        rpath = f"{path}.router.routes[{j}]"
        if not ROUTE_NAME.match(route.name):
            chk.add(f"{rpath}.name", "use 1-64 letters, digits, or _ . : -")
        elif route.name in names:
            chk.add(f"{rpath}.name", f'duplicate route name "{route.name}"')
        names.add(route.name)
        expr = None
        if route.condition:
            expr = chk.compile(cel, route.condition, Scope.ROUTE, f"{rpath}.condition")
        elif r.mode in (graph_pb2.ROUTER_MODE_UNSPECIFIED, graph_pb2.ROUTER_MODE_DETERMINISTIC):
            chk.add(f"{rpath}.condition", "a deterministic route needs a CEL condition")
        if route.condition and r.mode == graph_pb2.ROUTER_MODE_LLM:
            chk.add(
                f"{rpath}.condition",
                "the llm mode does not evaluate conditions: use ROUTER_MODE_HYBRID to try "
                "them before the model",
            )
        routes.append((route.name, expr))
    if r.default_route:
        names.add(r.default_route)
    for oe in edges:
        if oe.label not in names:
            chk.add(
                f"{root}.edges[{oe.index}].label",
                f'edges leaving router "{node.id}" are taken by route name; "{oe.label}" is '
                f"not one of {sorted(names)}",
            )
    return routes


def _compile_llm(
    spec: graph_pb2.LlmNode,
    cel: CelCompiler,
    chk: Checker,
    path: str,
    prefix: str = "llm",
    router: bool = False,
) -> dict[str, Template]:
    """Checks of an LlmNode (the node's own, or a router's model at ``router.llm``)."""
    p = f"{path}.{prefix}"
    if spec.provider and spec.provider not in LLM_PROVIDERS:
        chk.add(
            f"{p}.provider",
            f'unknown provider "{spec.provider}": use one of {", ".join(LLM_PROVIDERS)} '
            "(empty: the server default)",
        )
    if not spec.prompt and not spec.messages and not router:
        chk.add(f"{p}.prompt", "an llm node needs a prompt or messages")
    if not 0 <= spec.max_tokens <= MAX_LLM_TOKENS:
        chk.add(f"{p}.max_tokens", f"must be between 0 and {MAX_LLM_TOKENS} (0: server default)")
    if spec.HasField("temperature") and not 0 <= spec.temperature <= 2:
        chk.add(f"{p}.temperature", "must be between 0 and 2")
    for i, stop in enumerate(spec.stop_sequences):
        if not stop.strip():
            chk.add(f"{p}.stop_sequences[{i}]", "must not be empty or blank")
    if spec.HasField("output_schema") and router:
        chk.add(f"{p}.output_schema", "a router's model answers with the route: leave it unset")
    elif spec.HasField("output_schema"):
        problem = schema_problem(to_plain(spec.output_schema))
        if problem:
            chk.add(f"{p}.output_schema", problem)
    fields = {f"{prefix}.system": spec.system, f"{prefix}.prompt": spec.prompt}
    for i, m in enumerate(spec.messages):
        if m.role not in ("user", "assistant"):
            chk.add(f"{p}.messages[{i}].role", 'must be "user" or "assistant"')
        fields[f"{prefix}.messages[{i}].content"] = m.content
    return chk.field_templates(cel, fields, path)


def _tool_problem(name: str, options: CompileOptions) -> str | None:
    """Why a graph may not name the tool ``name``, or None."""
    if name in options.tools:
        return None
    server, sep, tool = name.partition("/")
    if sep and server and tool:
        if server in options.mcp_servers:
            return None
        return f'"{name}" names MCP server "{server}", which is not configured; configured: ' + (
            ", ".join(sorted(options.mcp_servers)) or "none (DAGO_MCP_SERVERS)"
        )
    return f'no tool named "{name}" is registered; available: ' + ", ".join(sorted(options.tools))


def _compile_agent(
    spec: graph_pb2.AgentNode,
    options: CompileOptions,
    cel: CelCompiler,
    chk: Checker,
    path: str,
) -> dict[str, Template]:
    p = f"{path}.agent"
    if spec.llm.HasField("output_schema"):
        chk.add(
            f"{p}.llm.output_schema",
            "an agent answers in text: add an llm node with an output_schema after it",
        )
    seen: set[str] = set()
    for j, name in enumerate(spec.tools):
        problem = _tool_problem(name, options) if not name.endswith("/*") else None
        if name.endswith("/*") and name[:-2] not in options.mcp_servers:
            problem = f'"{name}" names MCP server "{name[:-2]}", which is not configured'
        if problem:
            chk.add(f"{p}.tools[{j}]", problem)
        elif name in seen:
            chk.add(f"{p}.tools[{j}]", f'"{name}" is listed twice')
        seen.add(name)
    if not 0 <= spec.max_turns <= MAX_AGENT_TURNS:
        chk.add(f"{p}.max_turns", f"must be between 0 and {MAX_AGENT_TURNS} (0: server default)")
    if spec.HasField("tool_timeout"):
        _check_duration(spec.tool_timeout, f"{p}.tool_timeout", chk)
    spec_llm = graph_pb2.LlmNode()
    spec_llm.CopyFrom(spec.llm)
    spec_llm.ClearField("output_schema")
    return _compile_llm(spec_llm, cel, chk, path, "agent.llm")


def _compile_http(
    spec: graph_pb2.HttpNode, cel: CelCompiler, chk: Checker, path: str
) -> dict[str, Template]:
    p = f"{path}.http"
    if spec.method and spec.method.upper() not in HTTP_METHODS:
        chk.add(f"{p}.method", f"must be one of {', '.join(HTTP_METHODS)} (empty: GET)")
    if not spec.url:
        chk.add(f"{p}.url", "an http node needs a url")
    elif "{{" not in spec.url and not re.match(r"^https?://[^/\s]+", spec.url):
        chk.add(f"{p}.url", "must be an absolute http:// or https:// URL")
    if spec.max_response_bytes < 0:
        chk.add(f"{p}.max_response_bytes", "must not be negative (0: the server default)")
    fields = {"http.url": spec.url, "http.body": spec.body}
    for name, value in spec.headers.items():
        if not HEADER_NAME.match(name):
            chk.add(f"{p}.headers[{name}]", "is not a valid HTTP header name")
        fields[f"http.headers[{name}]"] = value
    return chk.field_templates(cel, fields, path)


def _check_refs(
    ids: Mapping[str, int],
    compiled: Mapping[str, CompiledNode],
    output: Mapping[str, Expression],
    shape: Shape,
    inputs: Mapping[str, Any],
    chk: Checker,
    root: str,
) -> None:
    def same_loop(a: str, b: str) -> bool:
        return any(a in body and b in body for body in shape.bodies.values())

    def check(refs: Refs, path: str, before: str | None, self_ok: bool = True) -> None:
        for key in sorted(refs.inputs):
            if key not in inputs:
                chk.add(
                    path,
                    f'references inputs.{key}, but the request has no input "{key}" '
                    f"(inputs: {sorted(inputs) or 'none'})",
                )
        for ref in sorted(refs.nodes):
            if ref not in ids:
                chk.add(path, f'references nodes.{ref}, but no node has id "{ref}"')
            elif before is not None and not (
                (ref == before and self_ok)
                or ref in shape.ancestors[before]
                or same_loop(ref, before)
            ):
                chk.add(
                    path,
                    f'references nodes.{ref}, which does not run before "{before}": add an '
                    f"edge path from {ref} to {before}",
                )

    for nid, cn in compiled.items():
        path = f"{root}.nodes[{cn.index}]"
        # A node's inputs cannot read its own output (it has none yet), except
        # inside a loop, where the previous iteration's output exists.
        check(cn.inputs.refs, f"{path}.inputs", nid, self_ok=False)
        for name, expr in cn.output.items():
            check(expr.refs, f"{path}.output[{name}]", nid)
        for key, t in cn.templates.items():
            check(t.refs, f"{path}.{key}", nid, self_ok=False)
        for j, (_, rexpr) in enumerate(cn.routes):
            if rexpr is not None:
                check(rexpr.refs, f"{path}.router.routes[{j}].condition", nid, self_ok=False)
        for oe in cn.out_edges:
            if oe.condition is not None:
                check(oe.condition.refs, f"{root}.edges[{oe.index}].condition", nid)
    for name, expr in output.items():
        check(expr.refs, f"{root}.output[{name}]", None)
