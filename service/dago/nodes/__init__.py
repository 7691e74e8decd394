"""The node kinds this build runs: one registration line per kind.

Each kind is declared in its own module (``NodeKind``: name, submit-time check, how its
handler is built); adding one is its module, its line in ``KINDS`` and its field in the
proto's ``Node.kind`` oneof (docs/architecture.md, "Node kinds"). The composition root
(``dago.app``) gives the API and the workers ``kind_checks()`` to compile graphs with,
and the workers ``build_handlers()`` to run them.
"""

from __future__ import annotations

from collections.abc import Iterable

from dago.config import Settings
from dago.engine.kinds import KindCheck
from dago.nodes import agent, http, llm, map, router, subgraph, tool, wait
from dago.nodes.base import NodeDeps, NodeHandler, NodeKind
from dago.nodes.budget import Budget
from dago.nodes.http import SafeHttp
from dago.nodes.llm import ModelCaller
from dago.nodes.ratelimit import Limiter
from dago.nodes.toolbox import Toolbox
from dago.observe.metrics import Metrics
from dago.observe.tracing import Tracing

KINDS: tuple[NodeKind, ...] = (
    llm.KIND,
    agent.KIND,
    tool.KIND,
    http.KIND,
    router.KIND,
    wait.KIND,
    subgraph.KIND,
    map.KIND,
)
"""In the proto's order, which is the order error messages list them in."""


def kind_checks(kinds: Iterable[NodeKind] = KINDS) -> dict[str, KindCheck]:
    """``CompileOptions.kinds``: the check of every kind, by name."""
    checks: dict[str, KindCheck] = {}
    for kind in kinds:
        if kind.name in checks:
            raise ValueError(f"two node kinds are named {kind.name!r}")
        checks[kind.name] = kind.check
    return checks


def build_deps(
    settings: Settings,
    metrics: Metrics,
    tracing: Tracing,
    limiter: Limiter | None = None,
    budget: Budget | None = None,
) -> NodeDeps:
    """The dependencies the handlers of one worker process share; ``limiter``: the model
    rate limits its model calls reserve in (``dago.nodes.ratelimit``), if any; ``budget``:
    the worker's run budget (its model calls reserve against it; None: nothing is
    reserved)."""
    safe_http = SafeHttp(
        settings.http_allow, settings.http_max_response_bytes, metrics=metrics, tracing=tracing
    )
    return NodeDeps(
        settings=settings,
        metrics=metrics,
        tracing=tracing,
        http=safe_http,
        toolbox=Toolbox.from_settings(settings, safe_http),
        model=ModelCaller.from_settings(settings, metrics, tracing, limiter, budget),
    )


def build_handlers(deps: NodeDeps, kinds: Iterable[NodeKind] = KINDS) -> dict[str, NodeHandler]:
    """The worker's handler of every kind, by name."""
    return {kind.name: kind.build(deps) for kind in kinds}
