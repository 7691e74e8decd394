"""The per-node topology the Redis functions read (see ``topology``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from dago.engine.model import CompiledNode, OutEdge
from dago.engine.shape import Edge, Shape
from dago.v1 import graph_pb2


def start_reads(node: CompiledNode) -> tuple[str, str]:
    """What starting ``node`` reads, as the start scripts take it: need_inputs ("1"/"0")
    and the outputs ("*" for every node's, else the node ids, comma-separated)."""
    refs = node.refs
    need = "1" if refs.inputs or refs.all_inputs else "0"
    return need, "*" if refs.all_nodes else ",".join(sorted(refs.nodes))


def _single(oe: OutEdge, owner: Mapping[int, int], shape: Shape) -> int:
    """1 for a forward edge that is its target's only one, no loop's exit, into a node in
    no loop (the target is pending at iteration 1 until this edge fires it); 2 for such an
    edge into a loop's body (the target's iteration must be read); else 0 (a join)."""
    if oe.back or owner.get(oe.index, 0) != 0 or len(shape.forward_in[oe.to]) != 1:
        return 0
    return 2 if any(oe.to in body for body in shape.bodies.values()) else 1


def topology(nodes: Mapping[str, CompiledNode], edges: list[Edge], shape: Shape) -> dict[str, str]:
    """Per-node topology for the Lua scripts; field names are short because Lua decodes them.

    ``<node>`` (JSON): k kind, j join (0 all, 1 any), mx max_iterations, in forward
    in-degree, and the retry policy for timeouts the sweeper handles (ma attempts,
    ib/mb initial/max backoff ms, mu multiplier). ``><node>`` (plain text, read for
    every node a script completes, where decoding JSON numbers cost Redis more than
    the rest of the transition): the outgoing edges as ``index,to,back,owner,single``
    joined by ``;`` — back 0/1; owner the owning loop + 1 for an exit edge, else 0;
    single 1 or 2 for the only forward edge into ``to`` that is no loop's exit, which
    fires or skips ``to`` with no join bookkeeping (see _single). ``<node>``: what
    starting the node reads, ``need_inputs(0/1)|refs('*' or comma-separated node
    ids)|attempt timeout ms``, so a script can start work items it reads itself
    (advance.lua). Back edge fields
    ``b:<index>``: h head, s source, body nodes, ie internal forward edges, x exit edges
    [index, to] owned by this loop.
    """
    topo: dict[str, str] = {}
    # Each exit edge belongs to the outermost loop it leaves: only that loop's
    # end resolves it, so an inner loop ending does not skip nodes after the outer one.
    exits: dict[int, list[list[Any]]] = {b: [] for b in shape.bodies}
    owner: dict[int, int] = {}
    for src, to, idx in edges:
        if idx in shape.back:
            continue
        owners = [b for b, body in shape.bodies.items() if src in body and to not in body]
        if owners:
            outer = max(owners, key=lambda b: (len(shape.bodies[b]), -b))
            exits[outer].append([idx, to])
            owner[idx] = outer + 1
    for nid, cn in nodes.items():
        r = cn.retry
        topo[nid] = json.dumps(
            {
                "k": cn.kind,
                "j": 1 if cn.proto.join == graph_pb2.JOIN_MODE_ANY else 0,
                "mx": cn.proto.max_iterations,
                "in": len(shape.forward_in[nid]),
                "ma": r.max_attempts,
                "ib": int(r.initial_backoff * 1000),
                "mb": int(r.max_backoff * 1000),
                "mu": r.multiplier,
            },
            separators=(",", ":"),
        )
        need, names = start_reads(cn)
        topo[f"<{nid}"] = f"{need}|{names}|{int(cn.attempt_timeout * 1000)}"
        topo[f">{nid}"] = ";".join(
            f"{oe.index},{oe.to},{1 if oe.back else 0},{owner.get(oe.index, 0)},"
            f"{_single(oe, owner, shape)}"
            for oe in cn.out_edges
        )
    for b, body in shape.bodies.items():
        src, head, _ = next(e for e in edges if e[2] == b)
        internal = [e[2] for e in edges if e[2] not in shape.back and e[0] in body and e[1] in body]
        topo[f"b:{b}"] = json.dumps(
            {"h": head, "s": src, "body": sorted(body), "ie": internal, "x": exits[b]},
            separators=(",", ":"),
        )
    return topo
