"""Live event streams for WatchGraph.

The event log in Redis is the only source of truth: a watcher always reads
it with XRANGE from its cursor. What this module adds is the wake-up: the
Lua scripts append the graph id to a per-shard ``notify`` stream whenever a
graph's log grows, and one reader per shard (per process) tails it and wakes
the local watchers of that graph. A missed wake-up costs at most one
heartbeat interval, never an event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator

from dago.events import TERMINAL, decode, heartbeat
from dago.store import Store, raise_if_cancelling
from dago.v1 import execution_pb2

log = logging.getLogger("dago.watch")

PAGE = 500


class EventHub:
    """Wakes local watchers when their graph's event log grows."""

    def __init__(self, store: Store, heartbeat_ms: int, cluster: bool) -> None:
        self._store = store
        self._heartbeat = heartbeat_ms / 1000
        shards = list(range(store.keys.shards))
        self._groups = [[s] for s in shards] if cluster else [shards]
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)

    async def run(self) -> None:
        """Tail the notify streams until cancelled."""
        async with asyncio.TaskGroup() as tg:
            for group in self._groups:
                tg.create_task(self._tail(group))

    async def _tail(self, shards: list[int]) -> None:
        keys = [self._store.keys.shard(s).notify for s in shards]
        async for fields in self._store.follow(keys, block_ms=5000):
            if fields is None:
                self._wake_all()  # wake-ups may have been missed: every watcher re-reads
                continue
            for ev in self._waiters.get(fields[b"g"].decode(), ()):
                ev.set()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for ev in waiters:
                ev.set()

    async def watch(
        self, shard: int, graph_id: str, after_seq: int
    ) -> AsyncIterator[execution_pb2.Event]:
        """Events after ``after_seq``: the stored ones, then new ones as they come,
        heartbeats while idle; ends after the terminal event."""
        wake = asyncio.Event()
        self._waiters[graph_id].add(wake)
        cursor = after_seq
        try:
            while True:
                raise_if_cancelling()
                # Clear before reading: a wake-up during the read makes the next wait return.
                wake.clear()
                events = await self._store.events(shard, graph_id, cursor, PAGE)
                for seq, fields in events:
                    cursor = seq
                    ev = decode(graph_id, seq, fields)
                    yield ev
                    if ev.WhichOneof("payload") in TERMINAL:
                        return
                if len(events) == PAGE:
                    continue
                try:
                    await asyncio.wait_for(wake.wait(), self._heartbeat)
                except TimeoutError:
                    yield heartbeat(graph_id, cursor, int(time.time() * 1000))
        finally:
            waiters = self._waiters.get(graph_id)
            if waiters is not None:
                waiters.discard(wake)
                if not waiters:
                    del self._waiters[graph_id]
