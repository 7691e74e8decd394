"""The contract between the worker and the node kinds, and what declares a kind.

A handler gets a ``NodeContext`` (the rendered input, the CEL scope, a way to
emit events) and returns a ``NodeResult`` or raises ``NodeFailure``. Handlers
never touch Redis: the worker applies their result in one fenced transition.

A ``NodeKind`` declares one kind in its own module (``dago.nodes.<kind>``): its name,
its submit-time check (``dago.engine.kinds``) and how its ``NodeHandler`` is built from
the worker's shared ``NodeDeps``; ``dago.nodes`` registers the kinds this build runs.
See docs/architecture.md, "Node kinds".

``NodeFailure`` and ``invalid`` (``dago.engine.outcome``) are importable from here too:
operator tools raise them next to the ``Tool`` and ``NodeContext`` they use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dago.config import Settings
from dago.engine.kinds import KindCheck
from dago.engine.model import CompiledNode
from dago.engine.outcome import NodeFailure as NodeFailure
from dago.engine.outcome import Usage
from dago.engine.outcome import invalid as invalid
from dago.observe.metrics import Metrics
from dago.observe.tracing import Tracing

if TYPE_CHECKING:
    # The shared dependencies are defined by the kinds that use them (which import this).
    from dago.nodes.http import SafeHttp
    from dago.nodes.llm import ModelCaller
    from dago.nodes.toolbox import Toolbox

Emit = Callable[[list[tuple[str, str]]], Awaitable[bool]]


@dataclass
class NodeContext:
    """Everything a handler may use to run one attempt."""

    graph_id: str
    node: CompiledNode
    attempt: int
    iteration: int
    input: Any
    scope: dict[str, Any]
    emit: Emit
    worker_id: str
    tool_call: str = ""
    """Inside an agent: the tool call's position in the attempt (``t<turn>.<n>``)."""
    shard: int = 0
    execution: int = 0
    """The execution of the attempt this is (what the budget's reservations are held by)."""
    msg_id: bytes = b""
    """The execution's work item (acked when the budget parks the node)."""
    address: str = ""
    """The node run's name in its run's state, what the Redis functions fence on: the
    node's id, or a map item's ``<map>#<index>`` (whose ``node`` is the map's body); ""
    when unknown (handlers run without Redis), read as ``node.id``."""

    @property
    def idempotency_key(self) -> str:
        """Stable across redeliveries of this attempt: tools use it to de-duplicate effects.

        A tool an agent calls gets the attempt's key plus ``/<tool_call>``, the call's
        position (turn and index), so two calls of one attempt do not share a key.
        """
        key = f"{self.graph_id}/{self.node.id}/{self.iteration}/{self.attempt}"
        return f"{key}/{self.tool_call}" if self.tool_call else key


@dataclass
class NodeResult:
    """A successful attempt: its result, usage and, for routers, the decision."""

    value: Any
    usage: Usage | None = None
    route: dict[str, Any] | None = None
    wait: Any = None
    """A wait node that found no decision: what it waits for (``dago.nodes.wait.WaitRequest``);
    the worker puts the node in WAITING instead of completing it (``value`` is unused)."""
    child: Any = None
    """A subgraph node that found no outcome of a child for its attempt: the child run to
    start (``dago.nodes.subgraph.ChildRun``); the worker starts it and parks the node."""
    expand: Any = None
    """A map's first attempt: its items (``dago.nodes.map.MapExpansion``); the worker reports
    them with ``expand`` instead of completing the node (``value`` is unused)."""


Inline = Callable[[NodeContext], NodeResult]
"""A whole attempt run synchronously (see ``NodeHandler.inline``)."""


class NodeHandler(ABC):
    """Runs the nodes of one kind: one instance per worker process, shared by its attempts.

    ``run`` is the kind's work; the other abilities are methods whose defaults do nothing,
    overridden by the kinds that have them.
    """

    @abstractmethod
    async def run(self, ctx: NodeContext) -> NodeResult:
        """Run one attempt; raise ``NodeFailure`` when it fails."""

    def inline(self, node: CompiledNode) -> Inline | None:
        """How to run ``node``'s attempts without awaiting, or None (the default): ``run``
        runs them in a task of their own.

        An inline attempt runs where the worker started its batch: nothing can interrupt it
        (no timeout or cancellation), so only work that never waits may run inline.
        """
        return None

    async def warm(self) -> None:
        """Load what a first attempt would otherwise wait for (an SDK import); the worker
        calls it once as it starts, alongside its first attempts (a failure is logged)."""
        return None

    async def close(self) -> None:
        """Release what the handler holds open (sessions, processes) once the worker has
        drained; it may be called for a handler that never ran (a failure is logged)."""
        return None


Handler = NodeHandler
"""The name the worker knows handlers by."""


@dataclass(frozen=True)
class NodeDeps:
    """What handlers are built from: one of each per worker process, shared by every kind."""

    settings: Settings
    metrics: Metrics
    tracing: Tracing
    http: SafeHttp
    """HTTP requests with private addresses refused (the http kind, the http tool)."""
    toolbox: Toolbox
    """Every tool a graph may name (the tool and agent kinds)."""
    model: ModelCaller
    """Model calls: request, provider, streaming, usage and cost (llm, router, agent)."""


@dataclass(frozen=True)
class NodeKind:
    """One node kind, declared in its module and registered in ``dago.nodes``."""

    name: str
    """The name of the kind's field in the proto's ``Node.kind`` oneof (``llm``)."""
    check: KindCheck
    """Checks the kind's fields at submit, and returns the templates and routes the
    compiled node takes from them."""
    build: Callable[[NodeDeps], NodeHandler]
    """Makes the kind's handler for a worker from the shared dependencies."""


ToolFn = Callable[[Any, NodeContext], Awaitable[Any]]
InlineToolFn = Callable[[Any, NodeContext], Any]


@dataclass(frozen=True)
class Tool:
    """A tool an operator registered (or a built-in one).

    Operators provide tools as ``def dago_tools() -> list[Tool]`` in a module named in
    ``DAGO_TOOL_MODULES``, or under the ``dago.tools`` entry point group.
    """

    name: str
    description: str
    fn: ToolFn
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object"})
    inline: InlineToolFn | None = None
    """The same tool as a plain function, for tools that never wait (no I/O, no sleep, quick):
    a worker calls it in place of awaiting ``fn``, without a task of its own. Nothing can
    interrupt it (no timeout or cancellation takes effect while it runs), exactly as nothing
    interrupts an ``fn`` that never awaits. The nodes naming it are inline
    (``CompiledNode.inline``): delivered without a start, they are started and completed by
    the one call that applies their result, so they are never seen RUNNING."""
