"""The worker's run budget: ``dago.nodes.budget.Budget`` on the Redis functions ``reserve``
and ``reconcile`` (docs/limits.md, "Budgets")."""

from __future__ import annotations

from dago.engine.outcome import NodeFailure, Usage
from dago.nodes.base import NodeContext
from dago.nodes.budget import Budget, CallCost, Reservation
from dago.observe.metrics import Metrics
from dago.store.functions import ReconcileArgs, ReserveArgs
from dago.store.schema import Budget as Reply
from dago.store.store import Store
from dago.v1 import graph_pb2


class RedisBudget(Budget):
    """Reserves each model call's worst case in Redis before the call and reconciles it
    after; ``floor`` is the fewest output tokens a call is made with."""

    def __init__(self, store: Store, floor: int, metrics: Metrics) -> None:
        self._store = store
        self._floor = floor
        self._metrics = metrics

    async def reserve(self, ctx: NodeContext, call: CallCost) -> tuple[int, Reservation | None]:
        """See ``Budget.reserve``; a call of a stale execution is let through unreserved
        (its result will not be applied)."""
        args = ReserveArgs(
            ctx.graph_id,
            ctx.node.id,
            ctx.attempt,
            ctx.iteration,
            ctx.execution,
            ctx.msg_id.decode(),
            call.input_tokens,
            call.max_tokens,
            self._floor,
            repr(call.price_in),
            repr(call.price_out),
        )
        r = await self._store.reserve(ctx.shard, args)
        if r.outcome == Reply.FIT:
            held = Reservation(
                call.input_tokens + r.max_tokens,
                call.input_tokens * call.price_in + r.max_tokens * call.price_out,
                call.model,
            )
            self._metrics.budget("reserved", held.model, held.tokens, held.cost)
            return r.max_tokens, held
        if r.outcome == Reply.STALE:
            raise NodeFailure(
                graph_pb2.ERROR_CLASS_LIMIT, "the attempt is no longer current", False
            )
        raise NodeFailure(graph_pb2.ERROR_CLASS_LIMIT, r.message, retryable=False)

    async def reconcile(self, ctx: NodeContext, held: Reservation, usage: Usage | None) -> None:
        """See ``Budget.reconcile``."""
        u = usage or Usage()
        args = ReconcileArgs(
            ctx.graph_id,
            ctx.node.id,
            ctx.execution,
            held.tokens,
            repr(held.cost),
            u.input_tokens,
            u.output_tokens,
            repr(u.cost_usd),
        )
        await self._store.reconcile(ctx.shard, args)
        tokens = u.input_tokens + u.output_tokens
        self._metrics.budget("used", held.model, tokens, u.cost_usd)
