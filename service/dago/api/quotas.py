"""A namespace's quotas checked at submit (DAGO_NAMESPACES_FILE, docs/limits.md "Fair
shares"): its active runs and what its runs cost today. Over either, a new run is refused
with RESOURCE_EXHAUSTED and a QuotaFailure naming the namespace and the limit (HTTP 429
through Envoy). The active runs are counted by the submit function on the run's shard in
the step that creates it, against the cap less the namespace's active runs on the other
shards (read just before): submits that meet on one shard cannot pass the cap; on several
shards, a burst may pass it by the submits in flight on the others. The day's cost is read
over every shard before the run is created."""

from __future__ import annotations

from typing import NoReturn

from dago.api import errors
from dago.config import NamespacesFile, Settings
from dago.observe.metrics import Metrics
from dago.store.shares import over_daily, spent_today
from dago.store.store import Store
from dago.v1 import execution_pb2, orchestrator_pb2

ACTIVE = (execution_pb2.GRAPH_STATE_SUBMITTED, execution_pb2.GRAPH_STATE_RUNNING)
"""The states a run counts as active in."""


class Quotas:
    """The submit-time checks of every namespace's quotas."""

    def __init__(self, store: Store, settings: Settings, metrics: Metrics | None) -> None:
        self._store = store
        self._settings = settings
        self._metrics = metrics
        # The daily budgets as the file says now (raised without a restart).
        self._daily = NamespacesFile(settings.namespaces_file, store.shares)

    def _refuse(self, reason: str, namespace: str, description: str, limit: float) -> NoReturn:
        if self._metrics is not None:
            self._metrics.submits_refused.labels(reason).inc()
        raise errors.resource_exhausted(f"namespace:{namespace}", description, limit)

    async def active_cap(self, namespace: str, shard: int) -> tuple[int, int]:
        """``namespace``'s cap of active runs (0: none) and how many it may have on
        ``shard`` for the submit function (``SubmitArgs.max_active``; -1: no cap)."""
        limit = self._active_limit(namespace)
        if not limit:
            return 0, -1
        others = await self._store.active_graphs(namespace, ACTIVE, skip=shard)
        return limit, max(0, limit - others)

    def _active_limit(self, namespace: str) -> int:
        # The namespace's own cap, else the server-wide one (DAGO_MAX_ACTIVE_GRAPHS).
        return self._store.shares.of(namespace).max_active_runs or self._settings.max_active_graphs

    def refuse_active(self, namespace: str, limit: int) -> NoReturn:
        """RESOURCE_EXHAUSTED: ``namespace`` has ``limit`` runs submitted or running."""
        source = (
            "max_active_runs"
            if self._store.shares.of(namespace).max_active_runs
            else "DAGO_MAX_ACTIVE_GRAPHS"
        )
        self._refuse(
            "active_runs",
            namespace,
            f"namespace {namespace!r} already has {limit} graphs submitted or running (the "
            f"limit is its {source}); retry when some have finished",
            limit,
        )

    async def check(self, namespace: str) -> None:
        """RESOURCE_EXHAUSTED when ``namespace`` has spent its daily budget (its active runs
        are the submit function's: ``active_cap``)."""
        budget = self._daily.current().of(namespace).daily_cost_usd
        if budget:
            spent = await spent_today(self._store.redis, self._store.keys, namespace)
            why = over_daily(namespace, budget, spent)
            if why is not None:
                self._refuse(
                    "daily_cost", namespace, f"{why}; new runs are refused until tomorrow", budget
                )

    async def usage(self, namespace: str) -> orchestrator_pb2.NamespaceUsage:
        """``namespace``'s share and caps, and what it uses of them now (GetLimits)."""
        share = self._store.shares.of(namespace)
        running, queued = await self._store.namespace_load(namespace)
        return orchestrator_pb2.NamespaceUsage(
            namespace=namespace,
            weight=share.weight,
            max_running_nodes=share.max_running_nodes,
            max_active_runs=share.max_active_runs,
            daily_cost_usd=self._daily.current().of(namespace).daily_cost_usd,
            running_nodes=running,
            queued_nodes=queued,
            active_runs=await self._store.active_graphs(namespace, ACTIVE),
            spent_today_usd=await spent_today(self._store.redis, self._store.keys, namespace),
        )
