"""The compile-time side of a node kind: how its fields are checked at submit.

Compiling a graph (``dago.engine.compile``) checks what every node has in common (id,
inputs, output mapping, retry, timeouts) and hands the node to its kind's ``KindCheck``,
found by the name of the node's ``kind`` oneof field in ``CompileOptions.kinds``. The
check records what is wrong with the kind's own fields and returns what the compiled node
takes from them (``KindParts``). The engine knows no kind by name: which kinds exist, and
so which ones a graph may use, is the registry's business (``dago.nodes``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from dago.engine.cel import CelCompiler, Expression, Scope, Template
from dago.engine.checker import Checker
from dago.engine.model import CompiledGraph, CompileOptions, OutEdge
from dago.v1 import graph_pb2


@dataclass(frozen=True)
class CheckContext:
    """What a kind's check may use while one node compiles."""

    cel: CelCompiler
    checker: Checker
    """Where violations go; ``add`` records one at a field of the node."""
    path: str
    """The node's field path in the request (``graph.nodes[3]``)."""
    root: str
    """The graph's field path in the request (``graph``)."""
    out_edges: Sequence[OutEdge]
    """The node's outgoing edges (those with both ends known)."""
    options: CompileOptions
    """The server's settings (known tools, MCP servers, limits)."""

    def add(self, at: str, message: str) -> None:
        """Record a problem at the field ``at`` inside the node (``llm.prompt``)."""
        self.checker.add(f"{self.path}.{at}", message)

    def compile(self, source: str, scope: Scope, at: str) -> Expression | None:
        """The CEL expression of the node's field ``at``, or None after recording why not."""
        return self.checker.compile(self.cel, source, scope, f"{self.path}.{at}")

    def templates(self, fields: Mapping[str, str]) -> dict[str, Template]:
        """The string templates of the kind's fields (key: field path inside the node), the
        static ones left out; problems recorded at their field."""
        return self.checker.field_templates(self.cel, fields, self.path)


@dataclass(frozen=True)
class KindParts:
    """What a compiled node takes from its kind's fields."""

    templates: dict[str, Template] = field(default_factory=dict)
    """Templates of the kind's own fields by their path in the node (``llm.prompt``,
    ``http.url``), rendered by the handler over the scope and ``input``."""
    routes: list[tuple[str, Expression | None]] = field(default_factory=list)
    """A router's routes in order: name and condition (None: the model decides). Their
    conditions sit at ``<kind>.routes[i].condition`` in the node."""
    waits: bool = False
    """The node may wait for a signal (a ``wait`` node): starting it also reads the decision
    recorded for it (``dago.engine.topology.start_plan``)."""
    inline: bool = False
    """The node's attempts never wait, so a worker runs them inline (``CompiledNode.inline``:
    its work item is delivered without a start of its own)."""
    child: CompiledGraph | None = None
    """A subgraph node's graph, compiled one level deeper (``CompiledNode.child``)."""


class KindCheck(Protocol):
    """Checks the fields of one kind of node at submit (and when a worker compiles the graph).

    Called for every node of the kind, valid id or not, so the client sees every problem at
    once; it records problems through ``ctx`` and never raises for a bad graph.
    """

    def __call__(self, node: graph_pb2.Node, ctx: CheckContext) -> KindParts:
        """What the compiled node takes from the kind's fields."""
        ...


def kind_names(kinds: Mapping[str, KindCheck]) -> str:
    """The kinds a graph may use, for messages (``llm, agent, tool``)."""
    return ", ".join(kinds) or "none"
