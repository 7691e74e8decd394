"""ForkGraph's plan: which nodes of a finished run a fork reuses and which run again
(docs/semantics.md, "Fork"), the patched graph and inputs. The rules of what runs next
(joins, skips, loops) stay in the Lua core: the plan only names the reused nodes, which the
``submit`` function writes finished before the new run starts."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from dago.engine.checker import GraphInvalid, Violation
from dago.engine.model import CompiledGraph
from dago.engine.topology import map_result_ref
from dago.store.functions import ReusedNode
from dago.store.schema import MapResult, Node, Usage
from dago.v1 import execution_pb2, graph_pb2

_COMPLETED = execution_pb2.NODE_STATE_COMPLETED
_SKIPPED = execution_pb2.NODE_STATE_SKIPPED


Item = tuple[int, str, str]
"""A completed map item a fork reuses: (index, value JSON, recorded output JSON)."""

PLAN_FIELDS = (Node.STATE, Node.OUTPUT, Node.NEXT, f":{Usage.COST}")
"""The fields of a node (after its id) a plan reads; a map's summary is read too
(``map_result_ref``, then ``Node.OUTPUT``)."""


@dataclass(frozen=True)
class ForkSource:
    """A finished run as a fork is planned from it, read from Redis or from the history
    (where the archiver kept it as :func:`record`)."""

    graph_id: str
    state: execution_pb2.GraphState.ValueType
    graph: graph_pb2.Graph
    inputs: dict[str, Any]
    nodes: dict[bytes, bytes]
    """Its node fields (at least ``plan_fields``)."""
    items: dict[str, list[Item]] | None = None
    """From the history: the completed items of each of its maps that had some. None for a
    run in Redis, whose items are copied inside Redis (``Store.seed_items``)."""


def plan_fields(graph: graph_pb2.Graph, nodes: dict[bytes, bytes]) -> dict[str, str]:
    """The node fields of a run (``nodes``) that a fork's plan reads, as text."""
    out: dict[str, str] = {}
    for node in graph.nodes:
        names = [node.id + f for f in PLAN_FIELDS] + [map_result_ref(node.id) + Node.OUTPUT]
        for name in names:
            raw = nodes.get(name.encode())
            if raw is not None:
                out[name] = raw.decode()
    return out


def maps_done(graph: graph_pb2.Graph, nodes: dict[bytes, bytes]) -> list[str]:
    """The map nodes of a run with completed items (whose items a fork may reuse)."""
    return [n.id for n in graph.nodes if n.HasField("map") and _map_counts(nodes, n.id)[0]]


def record(
    graph: graph_pb2.Graph, nodes: dict[bytes, bytes], items: dict[str, list[Item]]
) -> dict[str, Any]:
    """What the history keeps of a finished run to fork it once Redis let it go
    (``dago_runs.fork_json``): its plan's node fields and its maps' completed items."""
    return {
        "nodes": plan_fields(graph, nodes),
        "items": {m: [list(i) for i in found] for m, found in items.items()},
    }


def from_record(doc: dict[str, Any]) -> tuple[dict[bytes, bytes], dict[str, list[Item]]]:
    """The node fields and map items a :func:`record` kept."""
    nodes = {k.encode(): v.encode() for k, v in doc.get("nodes", {}).items()}
    items = {m: [(int(i), v, o) for i, v, o in found] for m, found in doc.get("items", {}).items()}
    return nodes, items


@dataclass
class Plan:
    """Reused nodes (in topological order) and the nodes that run again, with the recorded
    cost of each side."""

    reused: list[ReusedNode] = field(default_factory=list)
    run: list[str] = field(default_factory=list)
    cost_saved: float = 0.0
    cost_estimate: float = 0.0
    maps: dict[str, tuple[int, int]] = field(default_factory=dict)
    """With ``failed_only``: per map node that runs again and had completed items, (items
    reused, items to run again), from its recorded summary."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch of ``target`` by ``patch``."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def patch_graph(graph: graph_pb2.Graph, patches: dict[str, graph_pb2.Node]) -> graph_pb2.Graph:
    """The graph with each patch merged into its node (protobuf merge: set fields replace,
    repeated fields are appended); GraphInvalid naming ``node_patches[<id>]``."""
    out = graph_pb2.Graph()
    out.CopyFrom(graph)
    index = {n.id: i for i, n in enumerate(out.nodes)}
    bad = []
    for nid, patch in sorted(patches.items()):
        if nid not in index:
            bad.append(Violation(f"node_patches[{nid}]", "names no node of the graph"))
        elif patch.id and patch.id != nid:
            bad.append(Violation(f"node_patches[{nid}].id", "a patch cannot rename its node"))
        else:
            out.nodes[index[nid]].MergeFrom(patch)
    if bad:
        raise GraphInvalid(bad)
    return out


def rename_violations(e: GraphInvalid, graph: graph_pb2.Graph, patched: set[str]) -> GraphInvalid:
    """The patched graph's violations, those inside a patched node named
    ``node_patches[<id>]...`` (the request's field), the others as they are."""
    out = []
    for v in e.violations:
        m = re.match(r"graph\.nodes\[(\d+)\](.*)", v.field)
        if m and int(m.group(1)) < len(graph.nodes):
            nid = graph.nodes[int(m.group(1))].id
            if nid in patched:
                out.append(Violation(f"node_patches[{nid}]{m.group(2)}", v.description))
                continue
        out.append(v)
    return GraphInvalid(out)


def plan(
    compiled: CompiledGraph,
    nodes: dict[bytes, bytes],
    from_nodes: list[str],
    failed_only: bool = False,
) -> Plan:
    """Which nodes a fork of the run (its node fields ``nodes``) reuses: a node that
    completed, or was skipped while every node before it is reused (an untaken branch),
    and is not downstream of the re-run set; the re-run set is ``from_nodes`` (empty with
    ``failed_only``) plus every node that cannot be reused (failed, cancelled, never
    started, skipped because of a failure); a loop with a node that runs again runs again
    whole, from its head. With ``failed_only``, a map node that completed with failed items
    (COLLECT) runs again too, and every map that runs again reuses its completed items
    (``Plan.maps``)."""
    ids = list(compiled.nodes)
    succ: dict[str, list[str]] = {n: [] for n in ids}
    pred: dict[str, list[str]] = {n: [] for n in ids}
    backs: list[tuple[str, str]] = []
    for n, cn in compiled.nodes.items():
        for e in cn.out_edges:
            if e.back:
                backs.append((n, e.to))
            else:
                succ[n].append(e.to)
                pred[e.to].append(n)
    order = _topo(ids, succ, pred)

    def state(n: str) -> int:
        raw = nodes.get(f"{n}{Node.STATE}".encode())
        return int(raw) if raw else 0

    runs: set[str] = set(from_nodes)
    reusable: set[str] = set()
    for n in order:
        st = state(n)
        if st == _COMPLETED or (st == _SKIPPED and pred[n] and all(p in reusable for p in pred[n])):
            reusable.add(n)
    if failed_only:
        reusable -= {n for n in reusable if _map_counts(nodes, n)[1] > 0}
    runs |= set(ids) - reusable
    bodies = [(h, _between(h, x, succ, pred) | {h, x}) for x, h in backs]
    while True:
        closed = _downstream(runs, succ)
        grown = closed | {h for h, body in bodies if body & closed}
        if grown == closed:
            break
        runs = grown
    p = Plan()
    for n in order:
        cost = _float(nodes.get(f"{n}:{Usage.COST}".encode()))
        if n in closed:
            p.run.append(n)
            p.cost_estimate += cost
            done, rest = _map_counts(nodes, n)
            if failed_only and compiled.nodes[n].body is not None and done:
                p.maps[n] = (done, rest)
        else:
            skipped = state(n) == _SKIPPED
            out = nodes.get(f"{n}{Node.OUTPUT}".encode(), b"null").decode()
            taken = nodes.get(f"{n}{Node.NEXT}".encode(), b"").decode()
            p.reused.append(ReusedNode(n, skipped, out, taken))
            p.cost_saved += cost
    return p


def _map_counts(nodes: dict[bytes, bytes], n: str) -> tuple[int, int]:
    """(completed, not completed) items of map node ``n`` from its recorded summary
    (``schema.MapResult``), (0, 0) for a node that is no map or never expanded."""
    raw = nodes.get(f"{map_result_ref(n)}{Node.OUTPUT}".encode())
    if not raw:
        return 0, 0
    rec = json.loads(raw)
    done = int(rec.get(MapResult.COMPLETED) or 0)
    return done, int(rec.get(MapResult.TOTAL) or 0) - done


def _float(raw: bytes | None) -> float:
    try:
        return float(raw) if raw else 0.0
    except ValueError:
        return 0.0


def _topo(ids: list[str], succ: dict[str, list[str]], pred: dict[str, list[str]]) -> list[str]:
    deg = {n: len(pred[n]) for n in ids}
    todo = [n for n in ids if deg[n] == 0]
    out = []
    while todo:
        n = todo.pop(0)
        out.append(n)
        for s in succ[n]:
            deg[s] -= 1
            if deg[s] == 0:
                todo.append(s)
    return out


def _downstream(start: set[str], succ: dict[str, list[str]]) -> set[str]:
    seen = set(start)
    todo = list(start)
    while todo:
        for s in succ.get(todo.pop(), []):
            if s not in seen:
                seen.add(s)
                todo.append(s)
    return seen


def _between(
    head: str, tail: str, succ: dict[str, list[str]], pred: dict[str, list[str]]
) -> set[str]:
    """Nodes on a forward path from ``head`` to ``tail`` (a loop's body)."""
    after = _downstream({head}, succ)
    before = _downstream({tail}, pred)
    return after & before
