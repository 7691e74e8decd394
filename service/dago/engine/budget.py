"""The rules of a run's budget fields that the API checks (at submit and in
UpdateGraphLimits): one place for both (docs/limits.md, "Budgets")."""

from __future__ import annotations

import math
from collections.abc import Callable

from dago.v1 import graph_pb2

DEFAULT_WARN_SHARE = 0.8
"""``GraphLimits.warn_share`` when a graph sets none."""


def check_budget(lim: graph_pb2.GraphLimits, where: str, add: Callable[[str, str], None]) -> None:
    """Report (``add(field, problem)``) a bad max_tokens, max_cost_usd, on_exceed or
    warn_share of ``lim``, whose path is ``where``."""
    if lim.max_tokens < 0:
        add(f"{where}.max_tokens", "must not be negative")
    if not 0 <= lim.max_cost_usd < math.inf:  # NaN and Infinity fail too
        add(f"{where}.max_cost_usd", "must be a non-negative number")
    if lim.on_exceed not in graph_pb2.LimitAction.values():
        add(f"{where}.on_exceed", "must be LIMIT_ACTION_FAIL or LIMIT_ACTION_PAUSE")
    if not 0 <= lim.warn_share <= 1:  # NaN fails too
        add(f"{where}.warn_share", "must be between 0 and 1 (0: 0.8)")
