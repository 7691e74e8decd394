"""The cluster metrics: what the Redis functions count (``schema.Stats``) and the state of
the work streams, read from Redis when Prometheus scrapes the API process."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from dago.config import Settings, load_namespaces
from dago.store.keys import WORK_GROUP, Keys, ShardKeys
from dago.store.schema import GRAPH_DURATION_BUCKETS, Fair, Stats

log = logging.getLogger("dago.metrics")


def _s(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _ms(entry_id: Any) -> int:
    return int(_s(entry_id).split("-")[0])


def _fair(r: Any, sk: ShardKeys, per_ns: dict[str, list[int]]) -> tuple[int, int]:
    """Adds the shard's queued and running items per namespace to ``per_ns`` ([queued,
    running]); returns the items queued on the shard and when the oldest was queued (ms; 0:
    none)."""
    running = r.hgetall(sk.fair)
    for k, v in running.items():
        key = _s(k)
        if key.startswith(Fair.RUNNING):
            per_ns.setdefault(key[len(Fair.RUNNING) :], [0, 0])[1] += int(v)
    namespaces = [_s(n) for n in r.zrange(sk.ready, 0, -1)]
    if not namespaces:
        return 0, 0
    pipe = r.pipeline(transaction=False)
    priorities = range(Fair.PRIORITY_MIN, Fair.PRIORITY_MAX + 1)
    for ns in namespaces:
        for p in priorities:
            pipe.llen(sk.queue(ns, p))
            pipe.lindex(sk.queue(ns, p), 0)
    replies = pipe.execute()
    total, oldest, per = 0, 0, 2 * len(priorities)
    for i, ns in enumerate(namespaces):
        mine = replies[i * per : (i + 1) * per]
        n = sum(int(x) for x in mine[0::2])
        per_ns.setdefault(ns, [0, 0])[0] += n
        total += n
        for head in mine[1::2]:
            if head is not None:
                queued_ms = int(_s(head).split(Fair.QUEUED_SEP, 1)[0])
                oldest = queued_ms if not oldest else min(oldest, queued_ms)
    return total, oldest


class RedisCollector(Collector):
    """Reads the cluster's state from Redis when Prometheus scrapes (in the scrape thread,
    on its own synchronous connection): per shard one pipeline of XINFO GROUPS, XLEN,
    HGETALL of the shard's counters, plus one read per shard with a backlog."""

    def __init__(self, settings: Settings, keys: Keys) -> None:
        self._settings = settings
        self._keys = keys
        self._client: Any = None
        self._lock = threading.Lock()
        self._names: frozenset[str] | None = None

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

    def _named(self) -> frozenset[str]:
        """The namespaces DAGO_NAMESPACES_FILE names (read once)."""
        if self._names is None:
            path = self._settings.namespaces_file
            self._names = frozenset(load_namespaces(path).named) if path else frozenset()
        return self._names

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
            "dago_queue_depth",
            "Work items not yet delivered to any worker (queued in their namespace's queues, "
            "or in the work stream).",
            labels=["shard"],
        )
        ns_depth = GaugeMetricFamily(
            "dago_namespace_queue_depth",
            "Work items queued for their namespace's turn (fair shares), by namespace.",
            labels=["namespace"],
        )
        ns_running = GaugeMetricFamily(
            "dago_namespace_running",
            "Work items started and not finished, by namespace (what max_running_nodes caps).",
            labels=["namespace"],
        )
        per_ns: dict[str, list[int]] = {}
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
        archive = GaugeMetricFamily(
            "dago_archive_pending",
            "Finished runs waiting to be archived to PostgreSQL (kept in Redis meanwhile).",
            labels=["shard"],
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
        waits = GaugeMetricFamily(
            "dago_waits_open",
            "Wait nodes waiting for a signal now (every namespace), by shard.",
            labels=["shard"],
        )
        paused = GaugeMetricFamily(
            "dago_graphs_paused",
            "Runs paused by their budget now (GraphLimits.on_exceed PAUSE), by shard.",
            labels=["shard"],
        )
        totals = {
            Stats.SUBMITTED: 0.0,
            Stats.DEAD: 0.0,
            Stats.RECLAIMED: 0.0,
            Stats.DURATION_SUM: 0.0,
        }
        fin = {"completed": 0.0, "failed": 0.0, "cancelled": 0.0}
        buckets = [0.0] * (len(GRAPH_DURATION_BUCKETS) + 1)
        for sk in self._keys.all_shards():
            pipe = r.pipeline(transaction=False)
            pipe.xinfo_groups(sk.work)
            pipe.xlen(sk.dead)
            pipe.hgetall(sk.stats)
            pipe.zcard(sk.archive)
            groups, ndead, stats, queued = pipe.execute(raise_on_error=False)
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
            queued_fair, queued_since = _fair(r, sk, per_ns)
            if queued_since:
                oldest = max(oldest, (now_ms - queued_since) / 1000)
            depth.add_metric(label, int(waiting or 0) + queued_fair)
            lag.add_metric(label, oldest)
            dead.add_metric(label, 0 if isinstance(ndead, Exception) else int(ndead))
            archive.add_metric(label, 0 if isinstance(queued, Exception) else int(queued))
            if isinstance(stats, Exception):
                continue
            waits.add_metric(label, max(0.0, float(stats.get(Stats.WAITING.encode(), 0))))
            paused.add_metric(label, max(0.0, float(stats.get(Stats.PAUSED.encode(), 0))))
            for k, v in stats.items():
                key, val = _s(k), float(v)
                if key in totals:
                    totals[key] += val
                elif key.startswith(Stats.FINISHED) and key[len(Stats.FINISHED) :] in fin:
                    fin[key[len(Stats.FINISHED) :]] += val
                elif key.startswith(Stats.DURATION):
                    i = int(key[len(Stats.DURATION) :])
                    if 0 <= i < len(buckets):
                        buckets[i] += val
        active.add_metric([], max(0.0, totals[Stats.SUBMITTED] - sum(fin.values())))
        submitted.add_metric([], totals[Stats.SUBMITTED])
        for status, count in fin.items():
            finished.add_metric([status], count)
        dead_total.add_metric([], totals[Stats.DEAD])
        reclaimed.add_metric([], totals[Stats.RECLAIMED])
        cumulative: list[tuple[str, float]] = []
        running = 0.0
        for bound, count in zip((*GRAPH_DURATION_BUCKETS, float("inf")), buckets, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else str(bound), running))
        duration = HistogramMetricFamily(
            "dago_graph_duration_seconds",
            "Time from submission to the end of finished graphs.",
            buckets=cumulative,
            sum_value=totals[Stats.DURATION_SUM],
        )
        alive = GaugeMetricFamily(
            "dago_workers_alive", "Worker processes with a heartbeat within DAGO_WORKER_TTL_MS."
        )
        alive.add_metric(
            [],
            int(r.zcount(self._keys.workers_seen, now_ms - self._settings.worker_ttl_ms, "+inf")),
        )
        # A namespace is a label only when the operator named it (DAGO_NAMESPACES_FILE): a
        # tenant's namespace must not show on a page every tenant's activity feeds.
        named = self._named()
        labelled: dict[str, list[int]] = {}
        for ns, counts in per_ns.items():
            kept = ns if ns in named else "other"
            total = labelled.setdefault(kept, [0, 0])
            total[0] += counts[0]
            total[1] += counts[1]
        for ns, (queued_n, running_n) in sorted(labelled.items()):
            ns_depth.add_metric([ns], queued_n)
            ns_running.add_metric([ns], running_n)
        return [
            depth, ns_depth, ns_running, pending, lag, dead, active, submitted, finished,
            dead_total, reclaimed, duration, alive, archive, waits, paused,
        ]  # fmt: skip
