"""What compiling a graph produces: the compiled nodes and graph a worker runs, and the
server settings that bound what a graph may ask for."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dago.engine.cel import Expression, Refs, Template
from dago.engine.retry import Retry
from dago.v1 import graph_pb2

if TYPE_CHECKING:
    # kinds.py describes a kind's check in terms of these options.
    from dago.engine.kinds import KindCheck


@dataclass(frozen=True)
class OutEdge:
    """An edge as its source node sees it."""

    index: int
    to: str
    condition: Expression | None
    label: str
    back: bool


@dataclass
class CompiledNode:
    """A node with everything a worker needs to run it."""

    id: str
    index: int
    kind: str
    proto: graph_pb2.Node
    inputs: Template
    output: dict[str, Expression]
    out_edges: list[OutEdge]
    routes: list[tuple[str, Expression | None]]
    retry: Retry
    attempt_timeout: float
    refs: Refs = Refs.EMPTY
    templates: dict[str, Template] = field(default_factory=dict)
    """Templates of the kind's own fields (``llm.prompt``, ``http.url``...), scope ROUTE."""
    llm_cache_ttl: int = 0
    """The graph's ``defaults.llm_cache_ttl`` (a ``CacheTtl``): model calls of the node that
    set none use it."""
    waits: bool = False
    """The node may wait for a signal (``KindParts.waits``)."""
    inline: bool = False
    """Its attempts never wait (its kind said so: ``KindParts.inline``), so a worker runs
    them inline, and the functions deliver its work items without a start: the call that
    applies the result starts and completes the attempt at once (``StartPlan.INLINE`` in its
    start plan). The one place that decides which nodes are inline."""
    child: CompiledGraph | None = None
    """A subgraph node's graph, compiled (``KindParts.child``): the child run's topology."""


@dataclass
class CompiledGraph:
    """A validated graph: its nodes, shape and Lua topology."""

    proto: graph_pb2.Graph
    nodes: dict[str, CompiledNode]
    entries: list[str]
    topology: dict[str, str]
    start_plans: dict[str, str]
    """Per node, what starting it reads (``dago.engine.topology.start_plan``)."""
    output: dict[str, Expression] = field(default_factory=dict)
    sinks: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class CompileOptions:
    """Server settings that bound what a graph may ask for."""

    kinds: Mapping[str, KindCheck]
    """The node kinds this server runs, by the name of their ``Node.kind`` field, each with
    its submit-time check (``dago.nodes`` registers them); a graph may use only these."""
    tools: Collection[str]
    """Tool names a graph may use (operator, built-in and the http tool)."""
    inline_tools: Collection[str] = ()
    """Those of ``tools`` that have an inline form (``Tool.inline``: they never wait); the
    tool nodes naming them are inline (``CompiledNode.inline``)."""
    max_nodes: int = 1000
    mcp_servers: Collection[str] = ()
    """Configured MCP servers: ``<server>/<tool>`` names are accepted for them (the tool
    itself is checked when the node runs, so the API never starts an MCP server)."""
    max_edges: int = 5000
    default_attempt_timeout: float = 300.0
    max_graph_bytes: int = 1 << 20
    """Largest graph definition (serialized), checked before anything else."""
    budget_s: float = 2.0
    """CPU seconds compiling one graph may take; past it the graph is refused."""
    llm_provider: str = ""
    """The provider of model nodes that name none (``anthropic``, ``openai``, ``offline``)."""
    llm_model: str = ""
    """The model of model nodes that name none (empty: the provider's default)."""
    allow_unknown_models: bool = False
    """Accept Claude models the catalogue does not know (else refused at submit)."""
    max_depth: int = 5
    """How deeply runs may nest (DAGO_MAX_GRAPH_DEPTH): a subgraph node's graph is one level
    deeper than the graph holding it."""
    depth: int = 0
    """The nesting level of the graph being compiled (0: a run a client submitted)."""
