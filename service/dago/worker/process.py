"""``dago worker``: runs node attempts from the work streams.

Flow: a reader reserves free slots and takes that many work items with one function call
(``take``: read and marked running in Redis, with the inputs and outputs the nodes read);
when it finds fewer than it asked for, it waits for new work (XREAD from the cursors the
take returned, which delivers nothing). Each attempt runs (``dago.worker.attempt``), and
finished attempts are applied in rounds, one call per shard (``apply``), the round's calls
sent in one pipeline (one round trip on a single Redis); each records each result,
resolves edges, dispatches successors, acks the work items, and starts as
many new items of the shard as it applied. A work item is acked only by that call, so a
worker killed at any point loses nothing: its items are reclaimed after the lease.

Draining (SIGTERM): the feeders stop taking work between two calls, never in the middle
of one, so a draining worker takes nothing new; it finishes and applies what it holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

from prometheus_client import CollectorRegistry
from redis.exceptions import AskError, ClusterDownError, ResponseError, TryAgainError

from dago.config import Settings
from dago.engine.graphcache import GraphCache
from dago.nodes.base import Handler
from dago.observe.metrics import Metrics, serve
from dago.observe.redact import TENANT
from dago.observe.tracing import Tracing
from dago.store.client import STORE_ERRORS, raise_if_cancelling
from dago.store.functions import (
    Expanding,
    Result,
    Spawn,
    Started,
    ThrottledAttempt,
    Waiting,
    WorkItem,
)
from dago.store.schema import Work
from dago.store.store import Store
from dago.store.values import dumps
from dago.v1 import execution_pb2
from dago.worker.attempt import Attempts, Finished, Limits, Running
from dago.worker.slots import Slots

log = logging.getLogger("dago.worker")
T = TypeVar("T")

_MOVING = (AskError, TryAgainError, ClusterDownError)
"""Answers of a cluster whose slots are moving (MOVED is an AskError): the call did not run,
and will on the slot's new node; unlike other ``ResponseError``s, worth retrying."""

WAIT_MS = 2000
"""How long a reader that found no work blocks for new work before it looks again."""


class Worker:
    """One worker process: N slots fed from every shard's work stream."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        graphs: GraphCache,
        handlers: Mapping[str, Handler],
        worker_id: str,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self._store = store
        self._settings = settings
        self._graphs = graphs
        self._handlers = handlers
        self.id = worker_id
        self._metrics = metrics or Metrics(CollectorRegistry())
        self._tracing = tracing or Tracing("dago-worker", {})
        shards = list(range(settings.shards))
        # One take covers every shard on a single Redis; on a cluster each shard's keys
        # live in a slot of their own, so each shard has its own reader.
        self._groups = [[s] for s in shards] if settings.cluster else [shards]
        self._slots = Slots(settings.worker_slots, settings.worker_batch, len(self._groups))
        # Credential-shaped text is cut from error messages, by its shape only: comparing
        # what a tenant sees with the secrets would tell it which guess is one
        # (docs/security.md, "Secrets stay secret").
        self._attempts = Attempts(
            store,
            handlers,
            worker_id,
            TENANT,
            self._metrics,
            self._tracing,
            self._report,
            Limits(
                settings.max_node_bytes,
                settings.max_event_bytes,
                settings.max_graph_depth,
                settings.default_deadline_s,
            ),
        )
        # Attempts started and not yet applied (free slots a waiting reader holds are not busy).
        self._metrics.worker_slots(settings.worker_slots, lambda: len(self._attempts.running))
        # Finished attempts waiting for the completer: (shard, result).
        self._finished: list[tuple[int, Finished]] = []
        self._have_finished = asyncio.Event()
        self._unapplied = 0  # finished and not yet applied (or given up on)
        self._all_applied = asyncio.Event()
        self._stopping = asyncio.Event()
        """Set when draining starts: the feeders take nothing more."""
        self._states: dict[tuple[int, bytes], int] = {}
        """The node state each applied result left, until the completer counts it."""

    @property
    def metrics(self) -> Metrics:
        """The worker's metrics (its metrics server serves them)."""
        return self._metrics

    @property
    def in_flight(self) -> int:
        """Attempts running or waiting to be applied."""
        return self._slots.held

    async def wait_for_redis(self) -> None:
        """Return once Redis answers, saying what it waits for meanwhile."""
        delay = 0.2
        while True:
            raise_if_cancelling()
            try:
                await self._store.ready()
                return
            except STORE_ERRORS as e:
                log.warning("waiting for Redis (%s); retrying in %.1fs", e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set, then drain: finish running attempts, then return."""
        stop_metrics = serve(
            self._metrics.registry, self._settings.worker_metrics_port, f"worker {self.id}"
        )
        await self.wait_for_redis()
        await self._store.ensure_groups()
        await self._take_back()
        log.info("worker %s started: %d slots, shards %s", self.id, self._slots.total, self._groups)
        async with asyncio.TaskGroup() as tg:
            feeders = [tg.create_task(self._read_loop(g)) for g in self._groups]
            feeders.append(tg.create_task(self._reclaim_loop()))
            controls = [tg.create_task(self._control_loop(g)) for g in self._groups]
            renew = tg.create_task(self._renew_loop())
            heartbeat = tg.create_task(self._heartbeat_loop())
            completer = tg.create_task(self._complete_loop())
            warm = tg.create_task(self._each_handler("warm"))
            await stop.wait()
            log.info("worker %s draining %d attempts", self.id, len(self._attempts.running))
            # The feeders finish the call they are in (never cancelled mid-call, so whatever
            # it took is run and applied) and take nothing more; applies take nothing either.
            self._stopping.set()
            await asyncio.gather(*feeders, return_exceptions=True)
            while True:
                await self._drain()
                while self._unapplied:
                    self._all_applied.clear()
                    await self._all_applied.wait()
                if not any(r.task and not r.task.done() for r in self._attempts.running.values()):
                    break
            for t in (*controls, renew, heartbeat, completer, warm):
                t.cancel()
        self._attempts.cancel_timer()
        self._graphs.close()
        await self._deregister()
        await self._each_handler("close")
        stop_metrics()
        self._tracing.shutdown()
        await self._store.redis.aclose()  # not left to the process's exit: see ApiServer.run
        log.info("worker %s stopped", self.id)

    async def _each_handler(self, method: str) -> None:
        """Await ``method()`` (warm: load what a first attempt would wait for; close:
        release what it holds open) of every handler that has one; a failure is logged,
        not raised (the first attempt reports a failed warm-up; shutting down goes on past
        a failed close)."""
        for handler in {id(h): h for h in self._handlers.values()}.values():
            call = getattr(handler, method, None)
            if call is None:
                continue
            try:
                await call()
            except Exception as e:
                log.warning("%s of the %s handler failed: %s", method, type(handler).__name__, e)

    async def _drain(self) -> None:
        running = self._attempts.running
        tasks = [r.task for r in running.values() if r.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self._settings.drain_timeout_s)
        for t in pending:
            # Not applied, so still pending in Redis: another worker reclaims them.
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for key in [k for k, r in running.items() if r.task in pending and not r.reported]:
            del running[key]

    # --- feeding ---------------------------------------------------------------------

    async def _read_loop(self, shards: list[int]) -> None:
        """Take work of ``shards`` while slots are free; wait for work when there is none."""
        backoff = 0.1
        busy = False
        turn = 0
        while not self._stopping.is_set():
            raise_if_cancelling()
            n = await self._slots.reserve(busy, self._stopping)
            if n == 0:
                return
            # Every shard comes first in turn, so a backlog on one cannot starve the others.
            order = shards[turn:] + shards[:turn]
            turn = (turn + 1) % len(shards)
            try:
                taken = await self._store.take(order, self.id, n, self._settings.lease_ms)
                backoff = 0.1
            except STORE_ERRORS as e:
                self._slots.release(n)
                await self._recreate_groups(e)
                log.warning("taking work failed (%s); retrying in %.1fs", e, backoff)
                await self._pause(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            self._slots.release(n - len(taken.started))
            busy = bool(taken.started)
            if taken.started:
                await self._launch(taken.started)
            if len(taken.cursors) == len(order):  # every shard read to its end
                await self._wait_for_work(order, taken.cursors)

    async def _wait_for_work(self, shards: list[int], cursors: Sequence[bytes]) -> None:
        """Block until new work arrives on ``shards`` (or WAIT_MS pass, or draining starts).
        The wait delivers nothing, so cancelling it at any point is harmless."""
        wait = asyncio.ensure_future(self._store.wait_for_work(shards, cursors, WAIT_MS))
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait((wait, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not wait.done():
                wait.cancel()
        with contextlib.suppress(asyncio.CancelledError, *STORE_ERRORS):
            await wait

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when draining starts."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()

    async def _reclaim_loop(self) -> None:
        """Take over work that stopped being renewed: items idle past the lease that this
        process does not run (another worker's, or this worker name's from before a
        restart)."""
        lease = self._settings.lease_ms
        while not self._stopping.is_set():
            raise_if_cancelling()
            await self._pause(max(lease / 4000, 0.25))
            for shard in range(self._settings.shards):
                if self._stopping.is_set():
                    return
                await self._reclaim(shard, lease)

    async def _take_back(self) -> None:
        """Before taking new work: what this worker's name held when an earlier process of
        it stopped (a crash, a restart), at once instead of after the lease."""
        for shard in range(self._settings.shards):
            while await self._reclaim(shard, 0, own=True):
                pass

    async def _reclaim(self, shard: int, min_idle_ms: int, own: bool = False) -> int:
        """Reclaim up to the free slots' worth of one shard's idle items that this process
        does not run; returns how many it tried (0: none left, or no slot free)."""
        n = self._slots.reserve_now()
        if n == 0:
            return 0
        ids: list[bytes] = []
        try:
            idle = await self._store.idle_items(shard, min_idle_ms, 2 * n, self.id if own else None)
            ids = [m for m, _ in idle if (shard, m) not in self._attempts.running][:n]
            started = await self._store.reclaim(
                shard,
                self.id,
                ids,
                min_idle_ms,
                self._settings.max_deliveries,
                self._settings.lease_ms,
            )
        except STORE_ERRORS as e:
            log.warning("reclaim failed on shard %d: %s", shard, e)
            await self._recreate_groups(e)
            started = []
        self._slots.release(n - len(started))
        if started:
            whose = "this worker held before it restarted" if own else "left idle"
            log.info("reclaimed %d work items %s on shard %d", len(started), whose, shard)
            await self._launch(started)
        return len(ids)

    async def _recreate_groups(self, error: Exception) -> None:
        """A Redis that lost its data (restarted without persistence) has no consumer groups."""
        if "NOGROUP" in str(error):
            with contextlib.suppress(*STORE_ERRORS):
                await self._store.ensure_groups()

    async def _launch(self, started: Sequence[Started]) -> None:
        """Run work items a function started (each holds a slot)."""
        try:
            # One round trip for every graph of the batch this worker has not seen yet.
            stored = {s.item.graph_id: s.graph for s in started if s.graph is not None}
            loaded = await self._graphs.get_many(
                [(s.item.shard, s.item.graph_id) for s in started], stored
            )
        except STORE_ERRORS as e:
            # Left pending in Redis; the reclaim loop picks them up after the lease.
            log.warning("loading graphs failed: %s", e)
            self._slots.release(len(started))
            return
        # An attempt run inline that broke before reporting was dropped: free its slot.
        self._slots.release(self._attempts.launch(started, loaded))

    # --- applying results ------------------------------------------------------------

    def _report(self, running: Running, result: Finished) -> None:
        """Hand a finished attempt's result to the completer."""
        self._finished.append((running.item.shard, result))
        self._unapplied += 1
        self._have_finished.set()

    async def _complete_loop(self) -> None:
        while True:
            raise_if_cancelling()
            if not self._finished:
                self._have_finished.clear()
                await self._have_finished.wait()
                continue
            batch = self._finished[:512]
            del self._finished[:512]
            by_shard: dict[int, list[Finished]] = defaultdict(list)
            for shard, result in batch:
                by_shard[shard].append(result)
            taken = await self._apply(by_shard)
            running = self._attempts.running
            for shard, result in batch:  # kept until now: their leases are renewed meanwhile
                done = running.pop((shard, result.msg_id), None)
                if done is not None:
                    self._attempts.applied(done, self._states.pop((shard, result.msg_id), 0))
            # The slots of the applied attempts went to the new items taken with them.
            self._slots.release(len(batch) - taken)
            self._unapplied -= len(batch)
            if not self._unapplied:
                self._all_applied.set()

    async def _apply(self, by_shard: Mapping[int, list[Finished]]) -> int:
        """Apply a round of results, grouped by shard, and, unless draining, take as many new
        work items of each shard in the same step, each given the slot of an applied
        attempt (half as many while a reader waits for slots); returns how many were taken
        (their slots are accounted for). The shards' calls go in one pipeline (one round
        trip on a single Redis). Wait nodes that found no decision go to WAITING first
        (``_waiting``), and throttled attempts back to QUEUED (``_throttled``)."""
        parts: dict[int, list[Result]] = {}
        for shard, finished in by_shard.items():
            results = cast(list[Result], finished)
            if any(type(r) is not Result for r in finished):  # one pass over a plain batch
                waits = [r for r in finished if isinstance(r, Waiting)]
                if waits:
                    await self._waiting(shard, waits)
                for spawn in (r for r in finished if isinstance(r, Spawn)):
                    await self._spawning(shard, spawn)
                for r in finished:
                    if isinstance(r, Expanding):
                        await self._expanding(shard, r)
                throttled = [r for r in finished if isinstance(r, ThrottledAttempt)]
                if throttled:
                    await self._throttled(shard, throttled)
                results = [r for r in finished if isinstance(r, Result)]
            if results:
                parts[shard] = results
        if not parts:
            return 0
        backoff = 0.05
        taken = 0
        while True:
            raise_if_cancelling()
            round_: list[tuple[int, int, list[Result]]] = []
            for shard, results in parts.items():
                want = (
                    0 if self._stopping.is_set() else min(len(results), self._settings.worker_batch)
                )
                if self._slots.waiting:
                    # Half the slots go back to the readers, which take work of every shard:
                    # a shard with a backlog cannot keep all of them.
                    want //= 2
                round_.append((shard, want, results))
            try:
                replies = await self._store.apply_round(self.id, self._settings.lease_ms, round_)
            except STORE_ERRORS as e:
                # Keep the results and retry: the items stay pending, so nothing is lost
                # even if this process dies before Redis comes back (a result applied
                # before the connection broke is stale the second time, and changes nothing).
                log.warning("applying results failed (%s); retrying in %.2fs", e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            started: list[Started] = []
            again: dict[int, list[Result]] = {}
            for (shard, _, results), applied in zip(round_, replies, strict=True):
                if isinstance(applied, Exception):
                    if isinstance(applied, ResponseError) and not isinstance(applied, _MOVING):
                        # Redis refused the call itself: retrying cannot help. The items stay
                        # pending, are redelivered after the lease and end dead-lettered.
                        log.error("applying results was refused by Redis: %s", applied)
                    else:  # that shard's node did not answer (a cluster): that part again
                        again[shard] = results
                        log.warning("applying results failed on shard %d (%s)", shard, applied)
                    continue
                for result, state in zip(results, applied.states, strict=True):
                    self._states[(shard, result.msg_id)] = state
                started += applied.started
            if started:
                await self._launch(started)
                taken += len(started)
            if not again:
                return taken
            parts = again
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)

    async def _throttled(self, shard: int, items: list[ThrottledAttempt]) -> None:
        """Queue throttled attempts of one shard again after their waits (the function acks
        their work items, so their slots are free once this returns)."""
        states = await self._reported(
            "queueing throttled nodes again", lambda: self._store.throttle(shard, self.id, items)
        )
        if states is None:
            return
        for t, state in zip(items, states, strict=True):
            self._states[(shard, t.msg_id)] = state

    async def _waiting(self, shard: int, waits: list[Waiting]) -> None:
        """Put wait nodes of one shard into WAITING (the function acks their work items, so
        their slots are free once this returns)."""
        states = await self._reported(
            "putting wait nodes in WAITING", lambda: self._store.wait(shard, self.id, waits)
        )
        if states is None:
            return
        for w, state in zip(waits, states, strict=True):
            self._states[(shard, w.msg_id)] = state

    async def _spawning(self, shard: int, spawn: Spawn) -> None:
        """Start a subgraph node's child run and park the node (the function acks its work
        item; a retry after a lost reply is fenced out)."""
        got = await self._reported(
            "starting a child run", lambda: self._store.spawn(shard, spawn.args, spawn.topology)
        )
        if got is None:
            return
        outcome, child = got
        waiting = outcome in ("created", "exists")
        self._states[(shard, spawn.msg_id)] = execution_pb2.NODE_STATE_WAITING if waiting else 0
        if outcome == "created":
            log.info("child run started", extra={"graph_id": child})

    async def _expanding(self, shard: int, expanding: Expanding) -> None:
        """Report a map's items (``expand`` acks its work item)."""
        await self._reported("expanding a map", lambda: self._store.expand(shard, expanding))

    async def _reported(self, what: str, call: Callable[[], Awaitable[T]]) -> T | None:
        """``call`` retried like ``_apply`` while Redis is unreachable (each of these functions
        is fenced, so a retry after a lost reply changes nothing); None when Redis refused it
        (logged)."""
        backoff = 0.05
        while True:
            raise_if_cancelling()
            try:
                return await call()
            except ResponseError as e:
                log.error("%s was refused by Redis: %s", what, e)
                return None
            except STORE_ERRORS as e:
                log.warning("%s failed (%s); retrying in %.2fs", what, e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    # --- leases, cancellation, presence ----------------------------------------------

    async def _renew_loop(self) -> None:
        while True:
            raise_if_cancelling()
            await asyncio.sleep(self._settings.lease_ms / 3000)
            by_shard: dict[int, list[WorkItem]] = defaultdict(list)
            for r in self._attempts.running.values():
                by_shard[r.item.shard].append(r.item)
            for shard, items in by_shard.items():
                try:
                    await self._store.renew(shard, self.id, items)
                except STORE_ERRORS as e:
                    log.warning("renewing leases failed: %s", e)

    async def _control_loop(self, shards: list[int]) -> None:
        keys = [self._store.keys.shard(s).control for s in shards]
        async for fields in self._store.follow(keys, block_ms=2000):
            if fields is None:
                continue
            gid = fields[Work.GRAPH.encode()].decode()
            node = fields.get(Work.NODE.encode(), b"").decode()
            attempt = fields.get(Work.ATTEMPT.encode(), b"").decode()
            execution = fields.get(Work.EXECUTION.encode(), b"").decode()
            self._attempts.stop(gid, node, attempt, execution, self._graphs.cached(gid))

    async def _heartbeat_loop(self) -> None:
        """Register and keep the registration fresh (ListWorkers, health); a worker that
        stops heartbeating ages out after DAGO_WORKER_TTL_MS."""
        info: dict[str, Any] = {
            "id": self.id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "slots": self._settings.worker_slots,
            "kinds": sorted(self._handlers),
            "started_ms": int(time.time() * 1000),
            "metrics_port": self._settings.worker_metrics_port,
        }
        while True:
            raise_if_cancelling()
            try:
                now = int(time.time() * 1000)
                info["in_flight"] = len(self._attempts.running)
                await self._store.heartbeat(self.id, dumps(info), now)
            except STORE_ERRORS as e:
                log.warning("worker heartbeat failed: %s", e)
            await asyncio.sleep(self._settings.worker_heartbeat_ms / 1000)

    async def _deregister(self) -> None:
        with contextlib.suppress(*STORE_ERRORS):
            await self._store.deregister(self.id)
