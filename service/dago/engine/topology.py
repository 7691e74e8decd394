"""The per-node topology the Redis functions read (see ``topology``)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from dago.engine.model import CompiledNode, OutEdge
from dago.engine.retry import Retry
from dago.engine.shape import Edge, Shape
from dago.store.schema import LoopTopology, MapItems, Node, NodeTopology, StartPlan, Topology


def decision_ref(node_id: str) -> str:
    """The name a waiting node's start plan reads its recorded decision under, as if it
    were a node's output (``schema.Node.DECISION_REF``)."""
    return node_id + Node.DECISION_REF


def saved_ref(node_id: str) -> str:
    """The name an agent's start plan reads what it kept while waiting under (its
    conversation, ``schema.Node.SAVED_REF``)."""
    return node_id + Node.SAVED_REF


def map_result_ref(node_id: str) -> str:
    """The name a map node's start plan reads its items' summary under
    (``schema.MapItems.RESULT_REF``)."""
    return node_id + MapItems.RESULT_REF


def item_ref(node_id: str, index: int) -> str:
    """The name of a map's item ``index`` as a node (``schema.MapItems``)."""
    return f"{node_id}{MapItems.SEP}{index}"


def item_plan(body: CompiledNode, all_ids: Iterable[str] = ()) -> str:
    """The start plan of a map's items (as ``start_plan`` for the body), ``@`` where the
    functions put the item's name (``<map>#<i>``): it reads the item's value
    (``<map>#<i>:v``) and, for a body that may wait (a subgraph: a graph body), the outcome
    recorded for the item (``<map>#<i>:w``)."""
    refs = body.refs
    read = sorted(all_ids) if refs.all_nodes else sorted(refs.nodes)
    own = ["@" + MapItems.VALUE_REF]
    if body.waits:
        own.append("@" + Node.DECISION_REF)
    flag = StartPlan.INLINE if body.inline else ""
    return f"{','.join([*read, *own])}|{int(body.attempt_timeout * 1000)}|{flag}"


def start_plan(node: CompiledNode, all_ids: Iterable[str] = ()) -> str:
    """What starting ``node`` reads, how long it may run and whether it runs inline, as the
    functions read it (``schema.Node.PLAN``): ``refs|attempt timeout ms|flag``, refs ``*``
    for every node's output, else the node ids read, comma-separated; flag
    ``StartPlan.INLINE`` for an inline node (``CompiledNode.inline``), else empty. (The
    run's inputs are not read at a start: the worker holds them with the graph it loaded.)
    A node that may wait also reads the decision recorded for it (``decision_ref``), so its
    refs are always a list; an agent that may wait also reads its kept conversation
    (``saved_ref``)."""
    refs = node.refs
    if node.body is not None:
        # A map also reads its items' summary (written when they are done).
        read = sorted(all_ids) if refs.all_nodes else sorted(refs.nodes)
        names = ",".join([*read, map_result_ref(node.id)])
    elif node.waits:
        read = sorted(all_ids) if refs.all_nodes else sorted(refs.nodes)
        kept = [saved_ref(node.id)] if node.kind == "agent" else []
        names = ",".join([*read, decision_ref(node.id), *kept])
    else:
        names = "*" if refs.all_nodes else ",".join(sorted(refs.nodes))
    flag = StartPlan.INLINE if node.inline else ""
    return f"{names}|{int(node.attempt_timeout * 1000)}|{flag}"


def _single(oe: OutEdge, owner: Mapping[int, int], shape: Shape) -> int:
    """1 for a forward edge that is its target's only one, no loop's exit, into a node in
    no loop (the target is pending at iteration 1 until this edge fires it); 2 for such an
    edge into a loop's body (the target's iteration must be read); else 0 (a join)."""
    if oe.back or owner.get(oe.index, 0) != 0 or len(shape.forward_in[oe.to]) != 1:
        return 0
    return 2 if any(oe.to in body for body in shape.bodies.values()) else 1


RetryPolicy = tuple[int, int, int, float, float, list[int]]
"""``NodeTopology.RETRY``: max attempts, initial and max backoff (ms), multiplier, jitter,
the retryable error classes."""

ExitEdge = tuple[int, str]
"""``LoopTopology.EXITS`` item: an exit edge's index and its target node."""


def retry_policy(r: Retry) -> RetryPolicy:
    """A retry policy as the Redis functions' retry rule reads it (``NodeTopology.RETRY``)."""
    return (
        r.max_attempts,
        int(r.initial_backoff * 1000),
        int(r.max_backoff * 1000),
        r.multiplier,
        r.jitter,
        sorted(r.retry_on),
    )


def topology(nodes: Mapping[str, CompiledNode], edges: list[Edge], shape: Shape) -> dict[str, str]:
    """The graph's topology hash, which the Redis functions read (names in
    :mod:`dago.store.schema`: ``Topology``, ``NodeTopology``, ``LoopTopology``).

    ``<node>`` (JSON, ``NodeTopology``): kind, join mode, max_iterations, forward in-degree
    and the retry policy (``retry_policy``). ``><node>`` (plain text, read for every node a
    function completes, where decoding JSON numbers cost Redis more than the rest of the
    transition): the outgoing edges as ``index,to,back,owner,single`` joined by ``;`` —
    back 0/1; owner the owning loop + 1 for an exit edge, else 0; single 1 or 2 for the
    only forward edge into ``to`` that is no loop's exit, which fires or skips ``to`` with
    no join bookkeeping (see _single). ``b:<back edge index>`` (JSON,
    ``LoopTopology``): the loop's head, source, body nodes, internal forward edges, and
    the exit edges ``[index, to]`` it owns.
    """
    topo: dict[str, str] = {}
    # Each exit edge belongs to the outermost loop it leaves: only that loop's
    # end resolves it, so an inner loop ending does not skip nodes after the outer one.
    exits: dict[int, list[ExitEdge]] = {b: [] for b in shape.bodies}
    owner: dict[int, int] = {}
    for src, to, idx in edges:
        if idx in shape.back:
            continue
        owners = [b for b, body in shape.bodies.items() if src in body and to not in body]
        if owners:
            outer = max(owners, key=lambda b: (len(shape.bodies[b]), -b))
            exits[outer].append((idx, to))
            owner[idx] = outer + 1
    for nid, cn in nodes.items():
        topo[nid] = _json(
            {
                NodeTopology.KIND: cn.kind,
                NodeTopology.JOIN: int(cn.proto.join),
                NodeTopology.MAX_ITERATIONS: cn.proto.max_iterations,
                NodeTopology.IN_DEGREE: len(shape.forward_in[nid]),
                NodeTopology.RETRY: retry_policy(cn.retry),
            }
        )
        if cn.body is not None:
            # A map's items follow its body's retry policy (map.lua: Map.topo_name).
            topo[nid + MapItems.SEP] = _json(
                {
                    NodeTopology.KIND: cn.body.kind,
                    NodeTopology.JOIN: 0,
                    NodeTopology.MAX_ITERATIONS: 0,
                    NodeTopology.IN_DEGREE: 0,
                    NodeTopology.RETRY: retry_policy(cn.body.retry),
                }
            )
        topo[Topology.EDGES + nid] = ";".join(
            f"{oe.index},{oe.to},{1 if oe.back else 0},{owner.get(oe.index, 0)},"
            f"{_single(oe, owner, shape)}"
            for oe in cn.out_edges
        )
    for b, body in shape.bodies.items():
        src, head, _ = next(e for e in edges if e[2] == b)
        internal = [e[2] for e in edges if e[2] not in shape.back and e[0] in body and e[1] in body]
        topo[f"{Topology.LOOP}{b}"] = _json(
            {
                LoopTopology.HEAD: head,
                LoopTopology.SOURCE: src,
                LoopTopology.BODY: sorted(body),
                LoopTopology.INTERNAL: internal,
                LoopTopology.EXITS: exits[b],
            }
        )
    return topo


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
