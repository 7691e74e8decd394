"""The model rate-limit hook of model calls: what ``ModelCaller`` asks before and tells after
each call (llm, router, agent turns).

A ``Limiter`` (the worker's, ``dago.worker.ratelimits``, shared through Redis by every
worker; None: no limits configured) reserves one request, the call's estimated input
tokens and its ``max_tokens`` of output in the model's bucket before the call, raising
``Throttled`` when there is no room (the attempt ends, not failed, and its node is queued
again: docs/limits.md); after the call the reservation is settled to the tokens really
used, and a provider's 429 with a retry-after pauses the model for every worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dago.llm.base import LlmRequest


@dataclass(frozen=True)
class Reservation:
    """What one call took from its model's bucket."""

    provider: str
    model: str
    input_tokens: int
    output_tokens: int


class Limiter(Protocol):
    """Model rate limits shared by every worker (see the module doc)."""

    async def reserve(
        self, provider: str, model: str, input_tokens: int, output_tokens: int
    ) -> Reservation | None:
        """Take one request and these tokens from the model's bucket: the reservation, None
        when the model has no limit; raises ``dago.engine.outcome.Throttled`` when the
        bucket has no room."""
        ...

    async def settle(self, reservation: Reservation, input_used: int, output_used: int) -> None:
        """Give back what the call reserved and did not use (or take what it used beyond)."""
        ...

    async def pause(self, provider: str, model: str, seconds: float) -> None:
        """A provider answered 429 with a retry-after: no worker calls the model until then."""
        ...


def estimate_input_tokens(request: LlmRequest) -> int:
    """The request's input tokens, estimated before the call: ~4 characters a token over
    its system prompt, messages (and tool results) and tool schemas, at least 1. Settling
    corrects the estimate to what the provider counted."""
    chars = len(request.system)
    for m in request.messages:
        chars += len(m.content) + sum(len(r.content) for r in m.tool_results)
        chars += sum(len(str(c.arguments)) for c in m.tool_calls)
    for t in request.tools:
        chars += len(t.name) + len(t.description) + len(str(t.parameters))
    return max(1, chars // 4)
