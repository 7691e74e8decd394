"""Every Redis key dago uses, in one place.

All keys of one graph and the work stream it is dispatched on share one hash
tag, ``{s<shard>}``, so every state transition is a single Lua script that
also runs on Redis Cluster. A graph's shard is part of its id
(``<shard>-<ulid>``), so finding its keys needs no lookup.

The Redis functions build per-graph key names themselves (they cannot receive
every key up front without knowing the graph's topology); the layouts here
and in ``lua/core.lua`` must stay in step, which ``tests/store/test_keys.py``
checks.
"""

from __future__ import annotations

from dataclasses import dataclass

WORK_GROUP = "workers"
"""Consumer group of every work stream."""


@dataclass(frozen=True)
class ShardKeys:
    """Keys of one shard: its queues, timers and indexes."""

    prefix: str
    shard: int

    @property
    def tag(self) -> str:
        """``<prefix>:{s<n>}``: the hash-tagged base every shard key starts with."""
        return f"{self.prefix}:{{s{self.shard}}}"

    @property
    def work(self) -> str:
        """Stream of work items (one per node attempt to run)."""
        return f"{self.tag}:work"

    @property
    def dead(self) -> str:
        """Stream of dead-lettered work items."""
        return f"{self.tag}:dead"

    @property
    def stats(self) -> str:
        """Hash of the shard's counters read by the metrics (graphs submitted, finished by
        status, graph duration buckets, reclaimed and dead-lettered work)."""
        return f"{self.tag}:stats"

    @property
    def timers(self) -> str:
        """Sorted set of due times: retries, attempt timeouts, graph deadlines."""
        return f"{self.tag}:timers"

    @property
    def archive(self) -> str:
        """Sorted set of finished runs waiting to be archived to PostgreSQL, by end time
        (ms); their keys do not expire until the archiver took them out."""
        return f"{self.tag}:archive"

    @property
    def wake(self) -> str:
        """Capped stream with an entry whenever a call left work items no worker took (wakes
        the workers' readers that found nothing to take)."""
        return f"{self.tag}:wake"

    @property
    def notify(self) -> str:
        """Capped stream naming watched graphs (``watched``) whose event log grew (wakes
        their watchers)."""
        return f"{self.tag}:notify"

    @property
    def watched(self) -> str:
        """Sorted set of the graphs an API process streams to a watcher, by when that
        registration lapses (ms since the epoch; the API renews it while it watches): only
        these graphs are named in ``notify``."""
        return f"{self.tag}:watched"

    @property
    def control(self) -> str:
        """Capped stream of cancellations for workers."""
        return f"{self.tag}:control"

    def _ns(self, namespace: str) -> str:
        # The default namespace (every graph when authentication is off) keeps the plain
        # names; any other namespace has its own family, so a listing never mixes them.
        return self.tag if namespace in ("", "default") else f"{self.tag}:ns:{namespace}"

    def index(self, state: str = "", namespace: str = "default") -> str:
        """Sorted set of a namespace's graph ids by creation time, optionally for one state."""
        return f"{self._ns(namespace)}:index" + (f":{state}" if state else "")

    @property
    def namespaces(self) -> str:
        """Set of the namespaces with runs in this shard's indexes (added as a run is created,
        taken out when the sweep expires a namespace's last run): what an operator's
        listing of every namespace reads (``dago.history.listing``)."""
        return f"{self.tag}:namespaces"

    def waits(self, namespace: str = "default") -> str:
        """Sorted set of a namespace's waiting wait nodes, ``<graph id>|<node>`` by when they
        started waiting (ms): the inbox ListWaits reads."""
        return f"{self._ns(namespace)}:waits"

    def request(self, request_id: str, namespace: str = "default") -> str:
        """Idempotency record of a SubmitGraph request_id (request ids are per namespace)."""
        return f"{self._ns(namespace)}:req:{request_id}"

    def queue(self, namespace: str, priority: int) -> str:
        """List of a namespace's work items of one priority waiting to start, oldest first
        (each the time it was queued (ms), graph, node, attempt and iteration, joined by
        ``schema.Fair.QUEUED_SEP``): ``take`` moves them to
        ``work`` in fair turns (``lua/fair.lua``)."""
        return f"{self.tag}:q:{namespace or 'default'}:{priority}"

    @property
    def ready(self) -> str:
        """Sorted set of the namespaces with queued work items, by pass (virtual time)."""
        return f"{self.tag}:ready"

    @property
    def fair(self) -> str:
        """Hash of the shard's fair dispatch state (``dago.store.schema.Fair``): running
        items per namespace, the virtual time."""
        return f"{self.tag}:fair"

    @property
    def inflight(self) -> str:
        """Hash of the started work items (``work`` entry id -> namespace), so an ack counts
        one less running item of the right namespace."""
        return f"{self.tag}:inflight"

    @property
    def shares(self) -> str:
        """Hash of the namespaces' weights and running caps on this shard
        (``dago.store.schema.Fair``), written from DAGO_NAMESPACES_FILE as processes start."""
        return f"{self.tag}:shares"

    def spend(self, day: int) -> str:
        """Hash of what each namespace's runs cost on one UTC day (days since the epoch),
        USD: charged as attempts apply their usage; expires two days after that day."""
        return f"{self.tag}:spend:{day}"

    def graph(self, graph_id: str) -> GraphKeys:
        """Keys of one graph on this shard."""
        return GraphKeys(f"{self.tag}:g:{graph_id}")


@dataclass(frozen=True)
class GraphKeys:
    """Keys of one graph; ``base`` already carries the shard's hash tag."""

    base: str

    @property
    def meta(self) -> str:
        """Hash: state, timestamps, counters, usage, the definition."""
        return self.base

    @property
    def nodes(self) -> str:
        """Hash: per-node state, join counters, edge states and attempt records
        (``dago.store.schema.Node``); a waiting node's wait, the decision recorded for it
        and, for an agent waiting for an approval, its conversation (``Node.SAVED_REF``)."""
        return f"{self.base}:n"

    @property
    def topo(self) -> str:
        """Hash: per-node topology (JSON) read by the Lua scripts."""
        return f"{self.base}:t"

    @property
    def events(self) -> str:
        """Stream: the graph's event log, entry ids ``0-<seq>``."""
        return f"{self.base}:e"

    @property
    def children(self) -> str:
        """Sorted set: the child runs the graph's subgraph nodes started, by creation time."""
        return f"{self.base}:c"

    def items(self, map_node: str) -> str:
        """Hash: the items of map node ``map_node`` (``dago.store.schema.MapItems``), each's
        fields after ``<map>#<index>`` as a node's are in ``nodes``."""
        return f"{self.base}:m:{map_node}"

    def all(self) -> tuple[str, ...]:
        """Every key of the graph (for expiry), but its maps' item hashes (``items``)."""
        return (self.meta, self.nodes, self.topo, self.events, self.children)


@dataclass(frozen=True)
class DefinitionKeys:
    """Keys of one namespace's stored definitions (``DefinitionService``). They share one
    hash tag, ``{d:<namespace>}``, so publishing (the ``publish`` function: the next version
    and the name index together) runs in one slot on Redis Cluster; a namespace's
    definitions are small (a graph each) and few."""

    tag: str

    @property
    def names(self) -> str:
        """Sorted set of the namespace's definition names (all scored 0: read by name)."""
        return f"{self.tag}:names"

    def definition(self, name: str) -> str:
        """Hash of one definition (``dago.store.schema.Definition``): its version count and
        each version's record, digest and time (written by ``publish`` only)."""
        return f"{self.tag}:def:{name}"

    def marks(self, name: str) -> str:
        """Small hash of one definition's labels and deprecations (``Definition.LABEL``,
        ``Definition.DEPRECATED``): read whole on every read of the definition, without its
        versions' graphs."""
        return f"{self.tag}:def:{name}:m"


@dataclass(frozen=True)
class Keys:
    """Entry point: the key layout for one prefix and shard count."""

    prefix: str
    shards: int

    def shard(self, n: int) -> ShardKeys:
        """Keys of shard ``n``."""
        return ShardKeys(self.prefix, n)

    def all_shards(self) -> list[ShardKeys]:
        """Keys of every shard, in order."""
        return [self.shard(n) for n in range(self.shards)]

    def definitions(self, namespace: str = "default") -> DefinitionKeys:
        """Keys of a namespace's stored definitions."""
        return DefinitionKeys(f"{self.prefix}:{{d:{namespace or 'default'}}}")

    def rate_limit(self, provider: str, model: str) -> str:
        """Hash of one model's rate-limit bucket (``schema.RateLimit``; ``lua/ratelimit.lua``),
        shared by every worker. Its own hash tag, ``{rl:<provider>/<model>}``: each call
        touches one bucket (a call may not cross slots), and buckets spread over a cluster."""
        return f"{self.prefix}:{{rl:{provider}/{model}}}:bucket"

    @property
    def workers(self) -> str:
        """Hash of registered workers (id -> JSON description); entries whose heartbeat in
        ``workers_seen`` is older than DAGO_WORKER_TTL_MS are gone (the API prunes them)."""
        return f"{self.prefix}:{{workers}}:info"

    @property
    def workers_seen(self) -> str:
        """Sorted set of workers by last heartbeat (ms)."""
        return f"{self.prefix}:{{workers}}:seen"
