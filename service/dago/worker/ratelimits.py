"""The worker's model rate limits (``dago.nodes.ratelimit.Limiter``), kept in Redis so every
worker shares them: one bucket per configured model (``Keys.rate_limit``), operated by the
``ratelimit`` function (``lua/ratelimit.lua`` decides what is granted; the limits are the
operator's DAGO_RATE_LIMITS). See docs/limits.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from dago.config import ModelRateLimit, Settings, find_rate_limit, parse_rate_limits
from dago.engine.outcome import Throttled
from dago.nodes.ratelimit import Reservation
from dago.observe.metrics import Metrics
from dago.store.client import STORE_ERRORS
from dago.store.functions import RateOp, rate_limit_args
from dago.store.store import Store

log = logging.getLogger("dago.worker")


class StoreLimiter:
    """Model rate limits in Redis, shared by every worker (``Limiter``)."""

    def __init__(
        self, store: Store, limits: Mapping[str, ModelRateLimit], metrics: Metrics
    ) -> None:
        self._store = store
        self._limits = dict(limits)
        self._metrics = metrics

    @classmethod
    def from_settings(
        cls, settings: Settings, store: Store, metrics: Metrics
    ) -> StoreLimiter | None:
        """The limits of DAGO_RATE_LIMITS, or None when it configures none."""
        limits = parse_rate_limits(settings.rate_limits)
        return cls(store, limits, metrics) if limits else None

    async def reserve(
        self, provider: str, model: str, input_tokens: int, output_tokens: int
    ) -> Reservation | None:
        """Take one request and the tokens from the model's bucket (``Limiter.reserve``)."""
        limit = find_rate_limit(self._limits, provider, model)
        if limit is None:
            return None
        args = rate_limit_args(limit, RateOp.RESERVE, 1, input_tokens, output_tokens)
        bucket = await self._store.rate_limit(provider, model, args)
        if not bucket.granted:
            self._metrics.llm_throttled(provider, model, bucket.reason, bucket.wait_ms / 1000)
            raise Throttled(provider, model, bucket.wait_ms, bucket.reason)
        self._metrics.llm_rate_tokens(provider, model, "reserved", input_tokens, output_tokens)
        return Reservation(provider, model, input_tokens, output_tokens)

    async def settle(self, reservation: Reservation, input_used: int, output_used: int) -> None:
        """Give back what was reserved and not used (``Limiter.settle``). A failure is logged:
        the bucket refills on its own, so a lost refund only delays later calls."""
        r = reservation
        limit = find_rate_limit(self._limits, r.provider, r.model)
        if limit is None:
            return
        self._metrics.llm_rate_tokens(r.provider, r.model, "used", input_used, output_used)
        back_in, back_out = r.input_tokens - input_used, r.output_tokens - output_used
        if not back_in and not back_out:
            return
        args = rate_limit_args(limit, RateOp.SETTLE, 0, back_in, back_out)
        try:
            await self._store.rate_limit(r.provider, r.model, args)
        except STORE_ERRORS as e:
            log.warning("settling a rate limit reservation failed: %s", e)

    async def pause(self, provider: str, model: str, seconds: float) -> None:
        """Pause the model for every worker (``Limiter.pause``); a failure is logged (the
        worker that got the 429 still waits out its retry-after)."""
        limit = find_rate_limit(self._limits, provider, model)
        if limit is None:
            return
        args = rate_limit_args(limit, RateOp.PAUSE, pause_ms=max(1, round(seconds * 1000)))
        try:
            await self._store.rate_limit(provider, model, args)
        except STORE_ERRORS as e:
            log.warning("pausing %s/%s after a 429 failed: %s", provider, model, e)
