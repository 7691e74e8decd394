"""The run-budget hook of every model call (llm, router and agent turns): the moment before
and after the call, in one place (``ModelCaller.call``).

Before a call its worst case is reserved against the run's ``max_tokens`` and
``max_cost_usd`` (input tokens estimated, plus ``max_tokens``, at the model's dearest
rates); the reservation may lower the call's ``max_tokens`` to what fits, fail the attempt
(``ERROR_CLASS_LIMIT``) or park it while the run pauses. After the call the reservation is
reconciled to what the call used. The rules live in the Redis functions (``reserve.lua``,
``reconcile.lua``); the worker implements ``Budget`` on them (``dago.worker.budget``) and
gives it to the ``ModelCaller`` it builds: node kinds never touch Redis. See docs/limits.md,
"Budgets".
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dago.engine.outcome import Usage
from dago.llm.base import LlmRequest

if TYPE_CHECKING:
    from dago.nodes.base import NodeContext

CHARS_PER_TOKEN = 3.5
"""The input estimate when no count is at hand: one token per 3.5 characters of the prompt
(system, messages, tool definitions). English prose runs ~4 characters a token, code and
non-Latin text fewer: the reconciliation after the call corrects what the estimate missed,
and the after-the-attempt check stays the backstop."""


def estimate_input_tokens(request: LlmRequest) -> int:
    """The input tokens of ``request``, estimated (``CHARS_PER_TOKEN``)."""
    chars = len(request.system)
    for m in request.messages:
        chars += len(m.content) + 16  # a turn's framing
        # A tool call or result block carries its type, id and name besides its content.
        for c in m.tool_calls:
            chars += (
                64 + len(c.name) + len(json.dumps(c.arguments, ensure_ascii=False, default=str))
            )
        for r in m.tool_results:
            chars += 64 + len(r.content)
    for t in request.tools:
        chars += len(t.name) + len(t.description) + len(json.dumps(t.parameters, default=str))
    if request.output_schema is not None:
        chars += len(json.dumps(request.output_schema, default=str))
    return math.ceil(chars / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class CallCost:
    """A call's worst case, as reserved: its input tokens, its max_tokens and what one input
    and one output token cost at most (USD)."""

    model: str
    input_tokens: int
    max_tokens: int
    price_in: float
    price_out: float


@dataclass(frozen=True)
class Reservation:
    """What a call holds of its run's budget until it is reconciled."""

    tokens: int
    cost: float
    model: str = ""
    """The model, as a metrics label (``other`` for one the price table does not know)."""


class Budget:
    """The budget of the runs a worker calls models for. This base class reserves nothing
    (tests and tools that run handlers without Redis); the worker's is
    ``dago.worker.budget.RedisBudget``."""

    async def reserve(self, ctx: NodeContext, call: CallCost) -> tuple[int, Reservation | None]:
        """Reserve ``call`` for ``ctx``'s run: the max_tokens the call may use and what it
        holds. Raises ``NodeFailure`` (ERROR_CLASS_LIMIT) when it does not fit and the run
        fails, or when it paused the run (the node is parked: the attempt reports nothing
        that counts)."""
        return call.max_tokens, None

    async def reconcile(self, ctx: NodeContext, held: Reservation, usage: Usage | None) -> None:
        """Replace what a call held by what it used (None: nothing is known to be used)."""
        return None
