"""Subgraph nodes at submit: the definitions their bodies name, resolved and pinned.

A subgraph node may name a stored definition (``subgraph.definition``: ``name``, ``name@7``,
``name@label``) instead of an inline graph. When a run is submitted, every such reference,
at any depth, is resolved once and pinned: the node's ``graph`` becomes that version's graph
and its ``definition_version`` and ``definition_digest`` record which one, so the run (and
its child runs, which record them like a run by reference) never depends on a label moving
later. Nesting is checked on the way (DAGO_MAX_GRAPH_DEPTH): a definition that names itself
is refused at the depth cap, not followed forever.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from dago.api import errors
from dago.v1 import definitions_pb2, graph_pb2

Resolve = Callable[[str, str], Awaitable[definitions_pb2.DefinitionVersion]]
"""Resolves a reference (``name@selector``) found at a field path to its version."""


def has_references(graph: graph_pb2.Graph) -> bool:
    """Whether any subgraph node of ``graph`` (inline bodies included) names a definition
    not pinned yet."""
    for node in graph.nodes:
        if node.WhichOneof("kind") != "subgraph":
            continue
        sg = node.subgraph
        if sg.definition and not sg.HasField("graph"):
            return True
        if has_references(sg.graph):
            return True
    return False


async def pin_references(
    graph: graph_pb2.Graph, resolve: Resolve, max_depth: int, root: str = "graph", depth: int = 0
) -> None:
    """Resolve and pin (in place) every definition a subgraph node of ``graph`` names, its
    own graph's references included; INVALID_ARGUMENT past ``max_depth`` levels of nesting
    (naming the node's path), NOT_FOUND or FAILED_PRECONDITION as ``resolve`` says."""
    for i, node in enumerate(graph.nodes):
        if node.WhichOneof("kind") != "subgraph":
            continue
        sg = node.subgraph
        at = f"{root}.nodes[{i}].subgraph"
        if depth + 1 > max_depth:
            raise errors.invalid_field(
                at, f"nesting depth {depth + 1} exceeds {max_depth} (DAGO_MAX_GRAPH_DEPTH)"
            )
        if sg.definition and not sg.HasField("graph"):
            found = await resolve(sg.definition, f"{at}.definition")
            sg.graph.CopyFrom(found.graph)
            sg.definition_version = found.version
            sg.definition_digest = found.digest
        await pin_references(sg.graph, resolve, max_depth, f"{at}.graph", depth + 1)
