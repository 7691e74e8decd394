"""Validation and compilation of a submitted graph.

``compile_graph`` is the single place that decides whether a graph is
acceptable. It returns a ``CompiledGraph``: the graph's shape (forward edges,
loop back edges, loop bodies), its compiled CEL and templates, and the
per-node topology the Lua scripts read. The API server runs it at submit
time; workers run it again (cached per graph) to evaluate templates and
conditions, so both always agree.

What a node's kind adds (its own fields' checks and templates, a router's routes)
comes from the kind's check in ``CompileOptions.kinds`` (``dago.engine.kinds``):
this module names no kind.
"""

from __future__ import annotations

import difflib
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any, Final

from google.protobuf.message import Message

from dago.engine.budget import check_budget
from dago.engine.cel import CelCompiler, Expression, Refs, Scope
from dago.engine.checker import Checker, GraphInvalid, Violation
from dago.engine.fields import NOT_FINITE, check_text, first_non_finite, quote
from dago.engine.kinds import CheckContext, KindParts, kind_names
from dago.engine.model import CompiledGraph, CompiledNode, CompileOptions, OutEdge
from dago.engine.retry import check_retry, effective_retry, seconds
from dago.engine.shape import Edge, Shape, check_loops, reachable
from dago.engine.topology import item_plan, start_plan, topology
from dago.store.values import to_plain
from dago.v1 import graph_pb2

NODE_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
"""Node ids (always ``fullmatch``: ``match`` with ``$`` lets ``"a\\n"`` through, a second
node beside ``"a"``)."""
MAX_ITERATIONS = 10_000


class AnyInputs(Mapping[str, Any]):
    """The inputs of a graph checked before any run has inputs (a definition at publish):
    every input a template names counts as present, so only that rule waits for the
    submit, which checks the graph again with the run's own inputs."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


ANY_INPUTS: Final = AnyInputs()


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

    What bounds the cost of a graph is checked before any work: its size, and its numbers
    of nodes and edges. Compiling then stops with GraphInvalid when it has used
    ``options.budget_s`` of CPU (of the calling thread), and every expression is bounded
    by the CEL compiler's own limits, so no graph can hold a thread for long.
    """
    _check_size(graph, options, root)
    budget = _Budget(options.budget_s, root)
    bad = first_non_finite(graph, root)
    if bad is not None:  # nothing below could read the graph's values
        raise GraphInvalid([Violation(bad, NOT_FINITE)])
    chk = Checker()
    check_text(graph, chk, root, options.max_nodes, options.max_edges)
    ids = _check_nodes(graph, options, chk, root)
    edges = _check_edges(graph, ids, options, chk, root)
    entries = _entries(graph, ids, edges, chk, root)
    # Per-node checks need no graph shape, so they run even when the shape is broken:
    # the client sees every problem at once.
    compiled = _compile_nodes(graph, ids, edges, cel, options, chk, root, budget)
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
        start_plans={nid: start_plan(cn, ids) for nid, cn in compiled.items()},
        output=output,
        sinks=sinks,
    )


def _largest_part(msg: Message, path: str, size: int) -> tuple[str, int]:
    """The field path and size of what makes ``msg`` (``size`` bytes) large: the field or
    list element holding more than half of its bytes, followed down as far as one does."""
    for field, value in msg.ListFields():
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            continue  # a map (a Struct's values, headers) is named by its holder
        name = f"{path}.{field.name}"
        repeated = field.is_repeated
        for where, v in (
            [(f"{name}[{i}]", v) for i, v in enumerate(value)] if repeated else [(name, value)]
        ):
            if isinstance(v, Message):
                n = v.ByteSize()
            else:
                n = len(v.encode()) if isinstance(v, str) else len(v) if isinstance(v, bytes) else 0
            if n * 2 > size:
                return _largest_part(v, where, n) if isinstance(v, Message) else (where, n)
    return path, size


def _check_size(graph: graph_pb2.Graph, options: CompileOptions, root: str) -> None:
    """Refuse at once a graph too large to check (before any per-node work)."""
    problems: list[Violation] = []
    size = graph.ByteSize()
    if size > options.max_graph_bytes:
        where, part = _largest_part(graph, root, size)
        of = f" of a graph of {size} bytes" if where != root else ""
        problems.append(
            Violation(
                where,
                f"is {part} bytes{of}; a graph may take {options.max_graph_bytes} bytes "
                "(DAGO_MAX_GRAPH_BYTES): pass large data as inputs or by reference",
            )
        )
    if len(graph.nodes) > options.max_nodes:
        problems.append(
            Violation(
                f"{root}.nodes", f"{len(graph.nodes)} nodes; the limit is {options.max_nodes}"
            )
        )
    if len(graph.edges) > options.max_edges:
        problems.append(
            Violation(
                f"{root}.edges", f"{len(graph.edges)} edges; the limit is {options.max_edges}"
            )
        )
    if problems:
        raise GraphInvalid(problems)


class _Budget:
    """The CPU time compiling one graph may still take (``CompileOptions.budget_s``)."""

    def __init__(self, seconds: float, root: str) -> None:
        self._seconds = seconds
        self._root = root
        self._until = time.thread_time() + seconds

    def check(self) -> None:
        """GraphInvalid once the budget is spent."""
        if time.thread_time() > self._until:
            raise GraphInvalid(
                [
                    Violation(
                        self._root,
                        f"checking it took more than {self._seconds:g} s of CPU (the limit is "
                        "DAGO_COMPILE_BUDGET_S): make it smaller or its expressions simpler",
                    )
                ]
            )


def _check_nodes(
    graph: graph_pb2.Graph, options: CompileOptions, chk: Checker, root: str
) -> dict[str, int]:
    ids: dict[str, int] = {}
    if not graph.nodes:
        chk.add(f"{root}.nodes", "a graph needs at least one node")
    for i, node in enumerate(graph.nodes):
        path = f"{root}.nodes[{i}]"
        if not NODE_ID.fullmatch(node.id):
            chk.add(
                f"{path}.id",
                f"{quote(node.id)} is not a valid node id: use 1-64 ASCII letters, digits or _, "
                "starting with a letter or _ (ids are CEL identifiers: nodes.<id>.output)",
            )
        elif node.id in ids:
            chk.add(f"{path}.id", f'duplicate node id "{node.id}" (also nodes[{ids[node.id]}])')
        else:
            ids[node.id] = i
        kind = node.WhichOneof("kind")
        if kind is None:
            chk.add(path, f"a node needs a kind: one of {kind_names(options.kinds)}")
        elif kind not in options.kinds:
            chk.add(
                f"{path}.{kind}",
                f"the {kind} node kind is not available on this server "
                f"(available: {kind_names(options.kinds)})",
            )
        if not 0 <= node.max_iterations <= MAX_ITERATIONS:
            chk.add(f"{path}.max_iterations", f"must be between 0 and {MAX_ITERATIONS}")
        check_retry(node.retry, f"{path}.retry", chk)
        if node.HasField("attempt_timeout"):
            chk.duration(node.attempt_timeout, f"{path}.attempt_timeout")
    check_retry(graph.defaults.retry, f"{root}.defaults.retry", chk)
    if graph.defaults.HasField("attempt_timeout"):
        chk.duration(graph.defaults.attempt_timeout, f"{root}.defaults.attempt_timeout")
    lim = graph.limits
    if lim.max_steps < 0:
        chk.add(f"{root}.limits.max_steps", "must not be negative")
    check_budget(lim, f"{root}.limits", chk.add)
    if lim.HasField("deadline"):
        chk.duration(lim.deadline, f"{root}.limits.deadline")
    return ids


def _check_edges(
    graph: graph_pb2.Graph,
    ids: Mapping[str, int],
    options: CompileOptions,
    chk: Checker,
    root: str,
) -> list[Edge]:
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
                chk.add(f"{path}.{end}", f"no node has id {quote(ref)} (nodes: {known})")
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
                chk.add(f"{root}.entry_nodes[{i}]", f"no node has id {quote(nid)}")
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
    budget: _Budget,
) -> dict[str, CompiledNode]:
    out_edges: dict[str, list[OutEdge]] = {nid: [] for nid in ids}
    valid = {idx for _, _, idx in edges}
    # Conditions of edges with a bad end are still checked: the client sees every problem.
    for idx, e in enumerate(graph.edges):
        budget.check()
        cond = None
        if e.condition:
            cond = chk.compile(cel, e.condition, Scope.CONDITION, f"{root}.edges[{idx}].condition")
        if idx in valid:
            out_edges[e.__getattribute__("from")].append(OutEdge(idx, e.to, cond, e.label, False))

    compiled: dict[str, CompiledNode] = {}
    for i, node in enumerate(graph.nodes):
        budget.check()
        # Nodes with a bad or duplicate id are checked too, but not kept.
        nid = node.id if ids.get(node.id) == i else ""
        path = f"{root}.nodes[{i}]"
        cn = _compile_node(
            graph, node, i, nid, path, out_edges.get(nid, []), cel, options, chk, root
        )
        if cn is not None and nid:
            compiled[nid] = cn
    for cn in compiled.values():
        _set_refs(cn)
        if cn.body is not None:
            _set_refs(cn.body)
            cn.item_plan = item_plan(cn.body, ids)
    return compiled


def _compile_node(
    graph: graph_pb2.Graph,
    node: graph_pb2.Node,
    i: int,
    nid: str,
    path: str,
    out_edges: list[OutEdge],
    cel: CelCompiler,
    options: CompileOptions,
    chk: Checker,
    root: str,
) -> CompiledNode | None:
    """One node compiled (its common fields, then its kind's), or None after recording why
    not; a kind with a body (a map's node) has it compiled here too, under the same id."""
    kind = node.WhichOneof("kind") or ""
    value = to_plain(node.inputs) if node.HasField("inputs") else {}
    tmpl = chk.template(cel, value, Scope.TEMPLATE, f"{path}.inputs")
    output = {}
    for name, src in node.output.items():
        expr = chk.compile(cel, src, Scope.OUTPUT, f"{path}.output[{name}]")
        if expr is not None:
            output[name] = expr
    # An unknown kind was reported by _check_nodes; the kind checks its own fields.
    check = options.kinds.get(kind)
    parts = KindParts()
    if check is not None:
        parts = check(node, CheckContext(cel, chk, path, root, out_edges, options))
    timeout = options.default_attempt_timeout
    if node.HasField("attempt_timeout"):
        timeout = seconds(node.attempt_timeout)
    elif graph.defaults.HasField("attempt_timeout"):
        timeout = seconds(graph.defaults.attempt_timeout)
    body = None
    if parts.body is not None:
        # A graph body (map.graph, compiled as a subgraph body) is named as the request
        # names it; its nodes' paths follow (dago.nodes.subgraph.check).
        graph_body = kind == "map" and node.map.HasField("graph")
        bpath = f"{path}.{kind}.graph" if graph_body else f"{path}.{kind}.node"
        bkind = parts.body.WhichOneof("kind")
        if bkind is None:
            chk.add(bpath, f"a node needs a kind: one of {kind_names(options.kinds)}")
        elif bkind not in options.kinds:
            chk.add(
                f"{bpath}.{bkind}",
                f"the {bkind} node kind is not available on this server "
                f"(available: {kind_names(options.kinds)})",
            )
        check_retry(parts.body.retry, f"{bpath}.retry", chk)
        if parts.body.HasField("attempt_timeout"):
            chk.duration(parts.body.attempt_timeout, f"{bpath}.attempt_timeout")
        body = _compile_node(graph, parts.body, i, nid, bpath, [], cel, options, chk, root)
    if tmpl is None or not nid:
        return None
    return CompiledNode(
        id=nid,
        index=i,
        kind=kind,
        proto=node,
        inputs=tmpl,
        output=output,
        out_edges=out_edges,
        routes=parts.routes,
        retry=effective_retry(node, graph),
        attempt_timeout=timeout,
        templates=parts.templates,
        llm_cache_ttl=graph.defaults.llm_cache_ttl,
        waits=parts.waits,
        inline=parts.inline,
        expressions=parts.expressions,
        body=body,
        child=parts.child,
    )


def _set_refs(cn: CompiledNode) -> None:
    """What the node reads: its inputs, output mapping, edge conditions, routes, templates
    and expressions (its start plan reads those nodes' outputs)."""
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
    for e in cn.expressions.values():
        refs = refs.union(e.refs)
    cn.refs = refs


def did_you_mean(word: str, names: Iterable[str]) -> str:
    """``; did you mean "x"?`` naming the name nearest ``word``, or nothing."""
    near = difflib.get_close_matches(word, list(names), n=1, cutoff=0.6)
    return f"; did you mean {quote(near[0])}?" if near else ""


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
        # Inside a node, the node is named by its id (the path holds its index).
        who = f"node {quote(before)} " if before is not None else ""
        for key in sorted(refs.inputs):
            if key not in inputs:
                chk.add(
                    path,
                    f'{who}references inputs.{key}, but the request has no input "{key}"'
                    f"{did_you_mean(key, inputs)} (inputs: {sorted(inputs) or 'none'})",
                )
        for ref in sorted(refs.nodes):
            if ref not in ids:
                chk.add(
                    path,
                    f'{who}references nodes.{ref}, but no node has id "{ref}"'
                    f"{did_you_mean(ref, ids)} (nodes: {', '.join(sorted(ids)[:20])})",
                )
            elif before is not None and not (
                (ref == before and self_ok)
                or ref in shape.ancestors[before]
                or same_loop(ref, before)
            ):
                chk.add(
                    path,
                    f'{who}references nodes.{ref}, which does not run before "{before}": add '
                    f"an edge path from {ref} to {before}",
                )

    def check_node(cn: CompiledNode, nid: str, path: str) -> None:
        # A node's inputs cannot read its own output (it has none yet), except
        # inside a loop, where the previous iteration's output exists.
        # Each key of the inputs that reads what does not exist, by its own path.
        for key, refs in cn.inputs.refs_by_path():
            at = f"{path}.inputs" + (key if not key or key.startswith("[") else f".{key}")
            check(refs, at, nid, self_ok=False)
        for name, expr in cn.output.items():
            check(expr.refs, f"{path}.output[{name}]", nid)
        for key, t in cn.templates.items():
            check(t.refs, f"{path}.{key}", nid, self_ok=False)
        for key, e in cn.expressions.items():
            check(e.refs, f"{path}.{key}", nid, self_ok=False)
        if cn.body is not None:
            check_node(cn.body, nid, f"{path}.{cn.kind}.node")

    for nid, cn in compiled.items():
        path = f"{root}.nodes[{cn.index}]"
        check_node(cn, nid, path)
        for j, (_, rexpr) in enumerate(cn.routes):
            if rexpr is not None:
                check(rexpr.refs, f"{path}.{cn.kind}.routes[{j}].condition", nid, self_ok=False)
        for oe in cn.out_edges:
            if oe.condition is not None:
                check(oe.condition.refs, f"{root}.edges[{oe.index}].condition", nid)
    for name, expr in output.items():
        check(expr.refs, f"{root}.output[{name}]", None)
