"""The shape of a graph: which nodes the entries reach, the back edges that close loops,
each loop's body, and every node's ancestors."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dago.engine.checker import Checker
from dago.v1 import graph_pb2

Edge = tuple[str, str, int]  # (from, to, index in graph.edges)


def reachable(entries: list[str], edges: list[Edge]) -> set[str]:
    """The nodes reachable from ``entries``."""
    out: dict[str, list[str]] = {}
    for src, to, _ in edges:
        out.setdefault(src, []).append(to)
    seen = set(entries)
    todo = list(entries)
    while todo:
        for nxt in out.get(todo.pop(), []):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@dataclass
class Shape:
    """Forward edges (a DAG), back edges closing loops, and loop bodies."""

    reached: set[str]
    back: set[int]
    bodies: dict[int, set[str]]
    forward_out: dict[str, list[Edge]]
    forward_in: dict[str, list[Edge]]
    ancestors: dict[str, set[str]]

    @classmethod
    def build(cls, ids: list[str], edges: list[Edge], entries: list[str]) -> Shape:
        out: dict[str, list[Edge]] = {n: [] for n in ids}
        for e in edges:
            out[e[0]].append(e)
        back: set[int] = set()
        reached: set[str] = set()
        on_stack: set[str] = set()
        # Iterative DFS in declaration order, so back edges are deterministic.
        for start in entries:
            if start in reached:
                continue
            reached.add(start)
            on_stack.add(start)
            stack: list[tuple[str, Iterable[Edge]]] = [(start, iter(out[start]))]
            while stack:
                node, it = stack[-1]
                nxt = next(iter(it), None)
                if nxt is None:
                    stack.pop()
                    on_stack.discard(node)
                    continue
                to = nxt[1]
                if to in on_stack:
                    back.add(nxt[2])
                elif to not in reached:
                    reached.add(to)
                    on_stack.add(to)
                    stack.append((to, iter(out[to])))
        f_out: dict[str, list[Edge]] = {n: [] for n in ids}
        f_in: dict[str, list[Edge]] = {n: [] for n in ids}
        for e in edges:
            if e[2] not in back:
                f_out[e[0]].append(e)
                f_in[e[1]].append(e)
        ancestors = _closure(ids, f_in, lambda e: e[0])
        descendants = _closure(ids, f_out, lambda e: e[1])
        bodies: dict[int, set[str]] = {}
        for e in edges:
            if e[2] in back:
                src, head = e[0], e[1]
                bodies[e[2]] = {
                    v
                    for v in ids
                    if (v == head or v in descendants[head]) and (v == src or src in descendants[v])
                }
        return cls(reached, back, bodies, f_out, f_in, ancestors)


def _closure(ids: list[str], adj: Mapping[str, list[Edge]], pick: Any) -> dict[str, set[str]]:
    """For each node, every node reachable along ``adj`` (memoised DFS on a DAG)."""
    memo: dict[str, set[str]] = {}
    for start in ids:
        if start in memo:
            continue
        stack = [start]
        while stack:
            n = stack[-1]
            pending = [pick(e) for e in adj[n] if pick(e) not in memo]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            acc: set[str] = set()
            for e in adj[n]:
                m = pick(e)
                acc.add(m)
                acc |= memo[m]
            memo[n] = acc
    return memo


def check_loops(
    graph: graph_pb2.Graph,
    ids: Mapping[str, int],
    edges: list[Edge],
    shape: Shape,
    chk: Checker,
    root: str,
) -> None:
    for src, head, idx in edges:
        if idx not in shape.back:
            continue
        if graph.nodes[ids[head]].max_iterations <= 0:
            chk.add(
                f"{root}.nodes[{ids[head]}].max_iterations",
                f"edges[{idx}] ({src} -> {head}) closes a cycle; set max_iterations on "
                f'node "{head}" to bound the loop',
            )
        body = shape.bodies[idx]
        for v in body - {head}:
            for a, _, j in shape.forward_in[v]:
                if a not in body:
                    chk.add(
                        f"{root}.edges[{j}]",
                        f'enters the loop headed by "{head}" at "{v}"; a loop can only be '
                        "entered at its head",
                    )
