"""Subgraph nodes at submit: the definitions their bodies name, resolved and pinned.

A subgraph node, or a map's subgraph body (``map.node``), in the run's graph or in any graph
nested in it (subgraph and map graph bodies), may name a stored definition
(``subgraph.definition``: ``name``, ``name@7``, ``name@label``) instead of an inline graph.
When a run is submitted, every such reference, at any depth, is resolved once and pinned: the
node's ``graph`` becomes that version's graph and its ``definition_version`` and
``definition_digest`` record which one, so the run (and its child runs, which record them like
a run by reference) never depends on a label moving later. Nesting is checked on the way
(DAGO_MAX_GRAPH_DEPTH): a definition that names itself is refused at the depth cap, not
followed forever."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator

from dago.api import errors
from dago.v1 import definitions_pb2, graph_pb2

Resolve = Callable[[str, str], Awaitable[definitions_pb2.DefinitionVersion]]
"""Resolves a reference (``name@selector``) found at a field path to its version."""


def _subgraph_nodes(graph: graph_pb2.Graph, root: str) -> Iterator[tuple[str, graph_pb2.Node]]:
    """The nodes of ``graph`` that run a graph, with their field paths: subgraph nodes, a
    map's subgraph body (``map.node``) and a map's graph body (``map.graph``: its nested
    graph is walked like a subgraph node's, one level deeper)."""
    for i, node in enumerate(graph.nodes):
        kind = node.WhichOneof("kind")
        if kind == "subgraph":
            yield f"{root}.nodes[{i}]", node
        elif kind == "map" and node.map.node.WhichOneof("kind") == "subgraph":
            yield f"{root}.nodes[{i}].map.node", node.map.node


def _map_graphs(graph: graph_pb2.Graph, root: str) -> Iterator[tuple[str, graph_pb2.Graph]]:
    for i, node in enumerate(graph.nodes):
        if node.WhichOneof("kind") == "map" and node.map.HasField("graph"):
            yield f"{root}.nodes[{i}].map.graph", node.map.graph


def has_references(graph: graph_pb2.Graph) -> bool:
    """Whether any subgraph node of ``graph`` (inline bodies and map bodies included) names
    a definition not pinned yet."""
    for _, node in _subgraph_nodes(graph, ""):
        sg = node.subgraph
        if sg.definition and not sg.HasField("graph"):
            return True
        if has_references(sg.graph):
            return True
    return any(has_references(g) for _, g in _map_graphs(graph, ""))


async def pin_references(
    graph: graph_pb2.Graph, resolve: Resolve, max_depth: int, root: str = "graph", depth: int = 0
) -> None:
    """Resolve and pin (in place) every definition a subgraph node of ``graph`` names, its
    own graph's references included; INVALID_ARGUMENT past ``max_depth`` levels of nesting
    (naming the node's path), NOT_FOUND or FAILED_PRECONDITION as ``resolve`` says."""
    for path, node in _subgraph_nodes(graph, root):
        sg = node.subgraph
        at = f"{path}.subgraph"
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
    for at, body in _map_graphs(graph, root):
        if depth + 1 > max_depth:
            raise errors.invalid_field(
                at, f"nesting depth {depth + 1} exceeds {max_depth} (DAGO_MAX_GRAPH_DEPTH)"
            )
        await pin_references(body, resolve, max_depth, at, depth + 1)
