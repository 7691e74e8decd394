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
