"""Prometheus metrics of every dago process, on a registry injected by the composition root.

Two kinds:

- **process metrics** (RPCs, node executions, LLM calls, worker slots): counted where they
  happen, in the process that serves them on its own metrics port;
- **cluster metrics** (graphs submitted and finished, graph durations, queue depth, pending,
  lag, dead letters, live workers): read from Redis at scrape time by
  :class:`dago.store.stats.RedisCollector` in the API process. Every API replica reports
  the same values: aggregate them with ``max`` (not ``sum``) across replicas.

Labels are bounded: node kinds, outcomes, gRPC methods and codes, providers, shards, and
models (only those the price table knows, ``other`` for the rest; and capped: past
:data:`MAX_MODELS` distinct values a model is reported as ``other``).
Nothing graph-specific is ever a label. docs/metrics.md lists every metric.
"""

from __future__ import annotations

import logging
from bisect import bisect_left
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

log = logging.getLogger("dago.metrics")

MAX_MODELS = 50
"""Distinct model label values one process reports before it says ``other``."""

NODE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)
LLM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
WAIT_BUCKETS = (1.0, 10.0, 60.0, 300.0, 1800.0, 3600.0, 4 * 3600.0, 86400.0, 7 * 86400.0)
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


def new_registry() -> CollectorRegistry:
    """A fresh registry (never the global one) with the process and platform collectors."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


class _Bounded:
    """Caps the distinct values of one label; later newcomers become ``other``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) >= self._limit:
            return "other"
        self._seen.add(value)
        return value


class Metrics:
    """Every metric a dago process records; handed to its components by their constructors."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        r = registry
        self.rpc_requests = Counter(
            "dago_rpc_requests", "gRPC calls handled, by method and status code.",
            ["method", "code"], registry=r,
        )  # fmt: skip
        self.rpc_duration = Histogram(
            "dago_rpc_duration_seconds", "Latency of unary gRPC calls, by method.",
            ["method"], buckets=RPC_BUCKETS, registry=r,
        )  # fmt: skip
        self.rpc_streams = Gauge(
            "dago_rpc_streams_open",
            "Server-streaming calls open now, by method (WatchGraph, RunGraph: the watchers).",
            ["method"], registry=r,
        )  # fmt: skip
        self.nodes = NodeStats()
        r.register(self.nodes)
        self.slots = Gauge("dago_worker_slots", "Node attempts this worker runs at once.",
                           registry=r)  # fmt: skip
        self.slots_busy = Gauge(
            "dago_worker_slots_busy", "Slots running an attempt or applying its result.",
            registry=r,
        )  # fmt: skip
        self.llm_requests = Counter(
            "dago_llm_requests", "LLM calls, by provider, model and outcome (ok, error).",
            ["provider", "model", "outcome"], registry=r,
        )  # fmt: skip
        self.llm_tokens = Counter(
            "dago_llm_tokens",
            "LLM tokens, by provider, model and type (input, output, cache_write, cache_read).",
            ["provider", "model", "type"], registry=r,
        )  # fmt: skip
        self.llm_cost = Counter(
            "dago_llm_cost_usd", "LLM cost in US dollars from the price table.",
            ["provider", "model"], registry=r,
        )  # fmt: skip
        self.llm_errors = Counter(
            "dago_llm_errors", "Failed LLM calls, by provider and error class.",
            ["provider", "error_class"], registry=r,
        )  # fmt: skip
        self.llm_ttft = Histogram(
            "dago_llm_time_to_first_token_seconds",
            "Time from sending an LLM request to its first streamed text.",
            ["provider", "model"], buckets=LLM_BUCKETS, registry=r,
        )  # fmt: skip
        self.llm_duration = Histogram(
            "dago_llm_request_duration_seconds", "Duration of LLM calls.",
            ["provider", "model"], buckets=LLM_BUCKETS, registry=r,
        )  # fmt: skip
        self.http_requests = Counter(
            "dago_http_node_requests",
            "Requests sent by http nodes, by status class (2xx..5xx, error: no response).",
            ["status_class"], registry=r,
        )  # fmt: skip
        self.archived_runs = Counter(
            "dago_archived_runs",
            "Finished runs this API process wrote to PostgreSQL (DAGO_POSTGRES_URL).",
            registry=r,
        )  # fmt: skip
        self.archive_errors = Counter(
            "dago_archive_errors",
            "Archive rounds that failed (PostgreSQL or Redis unreachable); the runs wait.",
            registry=r,
        )  # fmt: skip
        self.wait_duration = Histogram(
            "dago_wait_duration_seconds",
            "How long wait nodes (and agents' tool call approvals) waited for their decision "
            "(observed by the worker that resumes the node), by how it was decided (signal, "
            "timeout).",
            ["decided_by"], buckets=WAIT_BUCKETS, registry=r,
        )  # fmt: skip
        self.signals = Counter(
            "dago_signals",
            "SignalGraph calls, by outcome (recorded, replayed, conflict, not_waiting, invalid, "
            "not_found).",
            ["outcome"], registry=r,
        )  # fmt: skip
        self.submits_refused = Counter(
            "dago_submits_refused",
            "Submissions refused with RESOURCE_EXHAUSTED by a namespace's quota, by reason "
            "(active_runs, daily_cost).",
            ["reason"], registry=r,
        )  # fmt: skip
        self.throttled = Counter(
            "dago_llm_throttled",
            "LLM calls a model rate limit had no room for (the node was queued again), by "
            "provider, model and the limit that was short.",
            ["provider", "model", "reason"], registry=r,
        )  # fmt: skip
        self.throttled_time = Histogram(
            "dago_llm_throttled_seconds",
            "Time nodes spent throttled by a model rate limit (each throttle's wait).",
            ["provider", "model"], buckets=LLM_BUCKETS, registry=r,
        )  # fmt: skip
        self.rate_tokens = Counter(
            "dago_llm_rate_limit_tokens",
            "Tokens of rate-limited models reserved before calls and used by them, by "
            "provider, model, type (input, output) and stage (reserved, used).",
            ["provider", "model", "type", "stage"], registry=r,
        )  # fmt: skip
        # No namespace label: /metrics never names a tenant (docs/security.md).
        self.budget_tokens = Counter(
            "dago_budget_tokens",
            "Tokens of model calls against their run's budget, by model and kind: reserved "
            "before the call (its worst case), used (reconciled after it).",
            ["model", "kind"], registry=r,
        )  # fmt: skip
        self.budget_cost = Counter(
            "dago_budget_cost_usd",
            "US dollars of model calls against their run's budget, by model and kind "
            "(reserved, used).",
            ["model", "kind"], registry=r,
        )  # fmt: skip
        self._model = _Bounded(MAX_MODELS)

    # --- workers ---------------------------------------------------------------------

    def worker_slots(self, total: int, busy: Callable[[], float]) -> None:
        """Report a worker's slot count and, at scrape time, how many are busy."""
        self.slots.set(total)
        self.slots_busy.set_function(busy)

    def node_done(self, kind: str, outcome: str, seconds: float) -> None:
        """One node attempt ended (the hot path; see :class:`NodeStats`)."""
        self.nodes.add(kind, outcome, seconds)

    # --- LLM calls -------------------------------------------------------------------

    def llm_call(
        self,
        provider: str,
        model: str,
        seconds: float,
        ttft: float | None,
        tokens: tuple[int, int, int, int],
        cost: float,
        error_class: str = "",
    ) -> None:
        """One LLM call ended (``error_class`` empty when it succeeded)."""
        model = self._model(model or "unknown")
        outcome = "error" if error_class else "ok"
        self.llm_requests.labels(provider, model, outcome).inc()
        self.llm_duration.labels(provider, model).observe(seconds)
        if ttft is not None:
            self.llm_ttft.labels(provider, model).observe(ttft)
        for kind, n in zip(("input", "output", "cache_write", "cache_read"), tokens, strict=True):
            if n:
                self.llm_tokens.labels(provider, model, kind).inc(n)
        if cost:
            self.llm_cost.labels(provider, model).inc(cost)
        if error_class:
            self.llm_errors.labels(provider, error_class).inc()

    def llm_throttled(self, provider: str, model: str, reason: str, seconds: float) -> None:
        """A call found no room in its model's bucket; its node waits ``seconds``."""
        model = self._model(model or "unknown")
        self.throttled.labels(provider, model, reason).inc()
        self.throttled_time.labels(provider, model).observe(seconds)

    def llm_rate_tokens(
        self, provider: str, model: str, stage: str, inputs: int, outputs: int
    ) -> None:
        """Tokens a rate-limited call reserved or used (``stage``)."""
        model = self._model(model or "unknown")
        self.rate_tokens.labels(provider, model, "input", stage).inc(inputs)
        self.rate_tokens.labels(provider, model, "output", stage).inc(outputs)

    def budget(self, kind: str, model: str, tokens: int, cost: float) -> None:
        """A model call's reservation (``kind`` reserved) or its reconciled usage (used)."""
        m = self._model(model or "unknown")
        self.budget_tokens.labels(m, kind).inc(max(0, tokens))
        self.budget_cost.labels(m, kind).inc(max(0.0, cost))

    def http_request(self, status: int | None) -> None:
        """An http node's request got ``status`` (None: no response)."""
        self.http_requests.labels(f"{status // 100}xx" if status else "error").inc()


class NodeStats(Collector):
    """Node execution counts and durations, kept in plain dicts and lists and turned into
    metric families only when Prometheus scrapes: an attempt costs a few dict and list
    operations, about a tenth of a prometheus_client counter plus histogram behind their
    locks (2.5 vs 31 µs measured on a loaded 2-core machine), which matters at tens of
    thousands of node executions per second. Written by
    the event loop only; a scrape (another thread) reads a copy."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.retries: dict[str, int] = {}
        # Per kind: one count per bucket of NODE_BUCKETS, one for +Inf, then the sum.
        self.durations: dict[str, list[float]] = {}

    def add(self, kind: str, outcome: str, seconds: float) -> None:
        """Count one attempt of ``kind`` that ended with ``outcome`` after ``seconds``."""
        key = (kind, outcome)
        self.counts[key] = self.counts.get(key, 0) + 1
        h = self.durations.get(kind)
        if h is None:
            h = self.durations[kind] = [0.0] * (len(NODE_BUCKETS) + 2)
        h[bisect_left(NODE_BUCKETS, seconds)] += 1
        h[-1] += seconds
        if outcome == "retrying":
            self.retries[kind] = self.retries.get(kind, 0) + 1

    def describe(self) -> Iterable[Metric]:
        """Nothing up front (the families are built at scrape time)."""
        return []

    def collect(self) -> Iterable[Metric]:
        """The counters and the histogram, from a copy of the current values."""
        executions = CounterMetricFamily(
            "dago_node_executions",
            "Node attempts run by this worker, by node kind and outcome "
            "(completed, retrying, failed, cancelled).",
            labels=["kind", "outcome"],
        )
        for (kind, outcome), n in list(self.counts.items()):
            executions.add_metric([kind, outcome], n)
        retries = CounterMetricFamily(
            "dago_node_retries",
            "Failed node attempts that scheduled another attempt.",
            labels=["kind"],
        )
        for kind, n in list(self.retries.items()):
            retries.add_metric([kind], n)
        duration = HistogramMetricFamily(
            "dago_node_duration_seconds",
            "Run time of node attempts, by node kind.",
            labels=["kind"],
        )
        for kind, live in list(self.durations.items()):
            h = list(live)
            buckets: list[tuple[str, float]] = []
            running = 0.0
            for bound, count in zip((*NODE_BUCKETS, float("inf")), h[:-1], strict=True):
                running += count
                buckets.append(("+Inf" if bound == float("inf") else str(bound), running))
            duration.add_metric([kind], buckets, sum_value=h[-1])
        return [executions, retries, duration]


def serve(registry: CollectorRegistry, port: int, what: str) -> Callable[[], None]:
    """Serve ``/metrics`` on ``port`` in a thread; returns a function that stops it. A busy
    port is logged and skipped: metrics never stop a process from working."""
    if not port:
        return lambda: None
    try:
        httpd, thread = start_http_server(port, registry=registry)
    except OSError as e:
        log.warning("%s metrics not served: port %d: %s", what, port, e)
        return lambda: None
    log.info("%s metrics on :%d/metrics", what, port)

    def stop() -> None:
        httpd.shutdown()
        httpd.server_close()
        thread.join(2)

    return stop


# --- cluster metrics, read from Redis at scrape time ---------------------------------------
