"""UpdateGraphLimits' rules: which values it takes, and what the ``limits`` function's
answer means for the client (docs/limits.md, "Budgets")."""

from __future__ import annotations

from dago.api import errors
from dago.engine.budget import check_budget
from dago.engine.checker import Violation
from dago.store.functions import LimitsArgs, LimitsChanged
from dago.store.schema import Budget
from dago.v1 import execution_pb2, orchestrator_pb2

_FIELDS = {Budget.LIMIT_TOKENS: "limits.max_tokens", Budget.LIMIT_COST: "limits.max_cost_usd"}


def limits_args(request: orchestrator_pb2.UpdateGraphLimitsRequest) -> LimitsArgs:
    """The ``limits`` function's arguments; INVALID_ARGUMENT (every bad field named) for a
    negative or non-finite value, or a request that changes nothing."""
    lim = request.limits
    bad: list[Violation] = []
    check_budget(lim, "limits", lambda f, d: bad.append(Violation(f, d)))
    bad = [v for v in bad if v.field in _FIELDS.values()]
    if not bad and not lim.max_tokens and not lim.max_cost_usd:
        bad.append(Violation("limits", "set max_tokens or max_cost_usd (0 keeps a limit)"))
    if bad:
        raise errors.invalid(bad)
    return LimitsArgs(
        request.graph_id,
        str(lim.max_tokens) if lim.max_tokens else "",
        repr(lim.max_cost_usd) if lim.max_cost_usd else "",
    )


def check_changed(graph_id: str, changed: LimitsChanged) -> None:
    """Raise what an unapplied change is for the client: NOT_FOUND, or FAILED_PRECONDITION
    for a run that ended or a limit below what the run used and holds."""
    if changed.outcome == "missing":
        raise errors.not_found("graph", graph_id)
    if changed.outcome == "ended":
        name = execution_pb2.GraphState.Name(changed.state)  # type: ignore[arg-type]
        raise errors.failed_precondition(
            "GRAPH_FINISHED", graph_id, f"graph {graph_id} already finished ({name})"
        )
    if changed.outcome == "below":
        field = _FIELDS.get(changed.limit, changed.limit)
        raise errors.failed_precondition(
            "LIMIT_BELOW_USAGE",
            graph_id,
            f"{field} may not be set below what the run has used and reserved ({changed.used})",
        )
