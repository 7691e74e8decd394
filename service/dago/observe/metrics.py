"""Prometheus metrics of every dago process, on a registry injected by the composition root.

Two kinds:

- **process metrics** (RPCs, node executions, LLM calls, worker slots): counted where they
  happen, in the process that serves them on its own metrics port;
- **cluster metrics** (graphs submitted and finished, graph durations, queue depth, pending,
  lag, dead letters, live workers): read from Redis at scrape time by :class:`RedisCollector`
  in the API process. Every API replica reports the same values: aggregate them with
  ``max`` (not ``sum``) across replicas.

Labels are bounded: node kinds, outcomes, gRPC methods and codes, providers, shards, and
models (capped: past :data:`MAX_MODELS` distinct values a model is reported as ``other``).
Nothing graph-specific is ever a label. docs/metrics.md lists every metric.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

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
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from dago.config import Settings
from dago.store.keys import WORK_GROUP, Keys

log = logging.getLogger("dago.metrics")

MAX_MODELS = 50
"""Distinct model label values one process reports before it says ``other``."""

GRAPH_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
"""Upper bounds of dago_graph_duration_seconds; lua/common.lua (record_end) uses the same."""

NODE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)
LLM_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
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


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _ms(entry_id: Any) -> int:
    return int(_s(entry_id).split("-")[0])


class RedisCollector(Collector):
    """Reads the cluster's state from Redis when Prometheus scrapes (in the scrape thread,
    on its own synchronous connection): per shard one pipeline of XINFO GROUPS, XLEN,
    HGETALL of the shard's counters, plus one read per shard with a backlog."""

    def __init__(self, settings: Settings, keys: Keys) -> None:
        self._settings = settings
        self._keys = keys
        self._client: Any = None
        self._lock = threading.Lock()

    def _redis(self) -> Any:
        if self._client is None:
            import redis
            from redis.cluster import RedisCluster

            url = self._settings.redis_url
            opts: dict[str, Any] = {"socket_timeout": 2, "socket_connect_timeout": 2}
            if self._settings.cluster:
                self._client = RedisCluster.from_url(url.replace("+cluster", "", 1), **opts)
            else:
                self._client = redis.Redis.from_url(url, **opts)
        return self._client

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: collecting needs Redis."""
        return []

    def collect(self) -> Iterable[Metric]:
        """Query Redis now; when it does not answer only ``dago_redis_up 0`` is reported."""
        up = GaugeMetricFamily("dago_redis_up", "1 when Redis answered this scrape.")
        with self._lock:
            try:
                families = self._read()
            except Exception as e:  # any Redis trouble: report it, never fail the scrape
                log.debug("reading metrics from Redis failed: %s", e)
                up.add_metric([], 0)
                return [up]
        up.add_metric([], 1)
        return [up, *families]

    def _read(self) -> list[Metric]:
        r = self._redis()
        now_ms = int(time.time() * 1000)
        depth = GaugeMetricFamily(
            "dago_queue_depth", "Work items not yet delivered to any worker.", labels=["shard"]
        )
        pending = GaugeMetricFamily(
            "dago_queue_pending",
            "Work items delivered and not yet acknowledged (running, or held by a dead worker "
            "until reclaimed).",
            labels=["shard"],
        )
        lag = GaugeMetricFamily(
            "dago_queue_lag_seconds",
            "Age of the oldest work item not yet delivered (0 when none waits).",
            labels=["shard"],
        )
        dead = GaugeMetricFamily(
            "dago_dead_letters", "Entries in the dead-letter list.", labels=["shard"]
        )
        active = GaugeMetricFamily(
            "dago_graphs_active", "Graphs submitted and not finished yet (submitted - finished)."
        )
        submitted = CounterMetricFamily(
            "dago_graphs_submitted", "Graphs created (all API replicas together)."
        )
        finished = CounterMetricFamily(
            "dago_graphs_finished", "Graphs finished, by status.", labels=["status"]
        )
        dead_total = CounterMetricFamily(
            "dago_work_dead_lettered", "Work items moved to the dead-letter list."
        )
        reclaimed = CounterMetricFamily(
            "dago_work_reclaimed",
            "Work items taken over (XAUTOCLAIM) from a worker that stopped renewing them.",
        )
        totals = {"submitted": 0.0, "dead": 0.0, "reclaimed": 0.0, "dur_sum": 0.0}
        fin = {"completed": 0.0, "failed": 0.0, "cancelled": 0.0}
        buckets = [0.0] * (len(GRAPH_DURATION_BUCKETS) + 1)
        for sk in self._keys.all_shards():
            pipe = r.pipeline(transaction=False)
            pipe.xinfo_groups(sk.work)
            pipe.xlen(sk.dead)
            pipe.hgetall(sk.stats)
            groups, ndead, stats = pipe.execute(raise_on_error=False)
            label = [str(sk.shard)]
            if isinstance(groups, Exception):  # the stream or group is not there yet
                groups = []
            group = next((g for g in groups if _s(g.get("name", "")) == WORK_GROUP), None)
            waiting, oldest = 0, 0.0
            if group is not None:
                last = _s(group.get("last-delivered-id") or "0-0")
                waiting = group.get("lag")
                if waiting is None:  # unknown after deletions: count what follows
                    waiting = len(r.xrange(sk.work, f"({last}", "+", count=100_000))
                if waiting:
                    nxt = r.xrange(sk.work, f"({last}", "+", count=1)
                    if nxt:
                        oldest = max(0.0, (now_ms - _ms(nxt[0][0])) / 1000)
                pending.add_metric(label, int(group.get("pending") or 0))
            else:
                pending.add_metric(label, 0)
            depth.add_metric(label, int(waiting or 0))
            lag.add_metric(label, oldest)
            dead.add_metric(label, 0 if isinstance(ndead, Exception) else int(ndead))
            if isinstance(stats, Exception):
                continue
            for k, v in stats.items():
                key, val = _s(k), float(v)
                if key in totals:
                    totals[key] += val
                elif key.startswith("fin:") and key[4:] in fin:
                    fin[key[4:]] += val
                elif key.startswith("dur:"):
                    i = int(key[4:])
                    if 0 <= i < len(buckets):
                        buckets[i] += val
        active.add_metric([], max(0.0, totals["submitted"] - sum(fin.values())))
        submitted.add_metric([], totals["submitted"])
        for status, count in fin.items():
            finished.add_metric([status], count)
        dead_total.add_metric([], totals["dead"])
        reclaimed.add_metric([], totals["reclaimed"])
        cumulative: list[tuple[str, float]] = []
        running = 0.0
        for bound, count in zip((*GRAPH_DURATION_BUCKETS, float("inf")), buckets, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else str(bound), running))
        duration = HistogramMetricFamily(
            "dago_graph_duration_seconds",
            "Time from submission to the end of finished graphs.",
            buckets=cumulative,
            sum_value=totals["dur_sum"],
        )
        alive = GaugeMetricFamily(
            "dago_workers_alive", "Worker processes with a heartbeat within DAGO_WORKER_TTL_MS."
        )
        alive.add_metric(
            [],
            int(r.zcount(self._keys.workers_seen, now_ms - self._settings.worker_ttl_ms, "+inf")),
        )
        return [
            depth, pending, lag, dead, active, submitted, finished, dead_total, reclaimed, duration,
            alive,
        ]  # fmt: skip
