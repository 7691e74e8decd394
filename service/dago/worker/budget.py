"""The worker's run budget: ``dago.nodes.budget.Budget`` on the Redis functions ``reserve``
and ``reconcile`` (docs/limits.md, "Budgets"), and the namespace's daily cost budget
(DAGO_NAMESPACES_FILE) checked at each reservation."""

from __future__ import annotations

from collections import OrderedDict

from dago.config import NamespacesFile
from dago.engine.outcome import NodeFailure, Usage
from dago.nodes.base import NodeContext
from dago.nodes.budget import Budget, CallCost, Reservation
from dago.observe.metrics import Metrics
from dago.store.functions import ReconcileArgs, ReserveArgs
from dago.store.schema import Budget as Reply
from dago.store.schema import Meta
from dago.store.shares import over_daily, spent_today
from dago.store.store import Store
from dago.v1 import graph_pb2


class RedisBudget(Budget):
    """Reserves each model call's worst case in Redis before the call and reconciles it
    after; ``floor`` is the fewest output tokens a call is made with."""

    NAMESPACES_KEPT = 4096
    """Runs whose namespace the worker remembers (a run's namespace never changes)."""

    def __init__(
        self, store: Store, floor: int, metrics: Metrics, shares: NamespacesFile | None = None
    ) -> None:
        self._store = store
        self._floor = floor
        self._metrics = metrics
        self._shares = shares or NamespacesFile("", store.shares)
        self._namespaces: OrderedDict[str, str] = OrderedDict()

    async def _namespace(self, ctx: NodeContext) -> str:
        """The namespace of ``ctx``'s run, read once per run (a hint kept in memory: the
        run's meta hash is the record)."""
        ns = self._namespaces.get(ctx.graph_id)
        if ns is None:
            gk = self._store.keys.shard(ctx.shard).graph(ctx.graph_id)
            raw = await self._store.redis.hget(gk.meta, Meta.NAMESPACE)
            ns = (raw.decode() if isinstance(raw, bytes) else raw) or "default"
            self._namespaces[ctx.graph_id] = ns
            if len(self._namespaces) > self.NAMESPACES_KEPT:
                self._namespaces.popitem(last=False)
        return ns

    async def _daily(self, ctx: NodeContext) -> str:
        """Why the run's namespace may spend no more today (``over_daily``), or "". Read
        only for a namespace with a daily budget: what it spent today, over every shard."""
        shares = self._shares.current()
        if not shares.default.daily_cost_usd and not any(
            s.daily_cost_usd for s in shares.named.values()
        ):
            return ""
        ns = await self._namespace(ctx)
        budget = shares.of(ns).daily_cost_usd
        if not budget:
            return ""
        spent = await spent_today(self._store.redis, self._store.keys, ns)
        return over_daily(ns, budget, spent) or ""

    async def reserve(self, ctx: NodeContext, call: CallCost) -> tuple[int, Reservation | None]:
        """See ``Budget.reserve``; a call of a stale execution is let through unreserved
        (its result will not be applied)."""
        args = ReserveArgs(
            ctx.graph_id,
            ctx.address or ctx.node.id,  # a map item's own address
            ctx.attempt,
            ctx.iteration,
            ctx.execution,
            ctx.msg_id.decode(),
            call.input_tokens,
            call.max_tokens,
            self._floor,
            repr(call.price_in),
            repr(call.price_out),
            await self._daily(ctx),
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
            ctx.address or ctx.node.id,  # a map item's own address
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
