"""A worker's slots: how many attempts it may hold at once (running, or finished and not
yet applied), and how the free ones are shared between the feeders that take work."""

from __future__ import annotations

import asyncio


class Slots:
    """The free slots of one worker process. Every work item a worker holds took a slot
    before it was taken from Redis (a take never asks for more than it reserved), and gives
    it back when its result is applied, when it is stale, or when it is dropped."""

    def __init__(self, total: int, batch: int, readers: int) -> None:
        self.total = total
        self.free = total
        self._batch = batch
        self._readers = readers
        self._freed = asyncio.Event()
        self.waiting = 0
        """Readers waiting for a free slot."""

    @property
    def held(self) -> int:
        """Slots held by attempts running or waiting to be applied."""
        return self.total - self.free

    async def reserve(self, busy: bool, stopping: asyncio.Event) -> int:
        """Up to a batch of free slots for a reader's take, waiting until one is free; 0 once
        ``stopping`` is set. The free slots are split between the readers and the
        reclaimer, so a reader of a quiet shard cannot starve the others. A worker's only
        reader whose last take found work (``busy``) takes all but an eighth: its next take
        likely finds work too, and larger batches cost fewer Redis calls per node."""
        while self.free <= 0:
            if stopping.is_set():
                return 0
            self._freed.clear()
            self.waiting += 1
            try:
                await _first(self._freed, stopping)
            finally:
                self.waiting -= 1
        if stopping.is_set():
            return 0
        if busy and self._readers == 1:
            share = self.free - self.free // 8
        else:
            share = max(1, self.free // (self._readers + 1))
        n = min(self._batch, share)
        self.free -= n
        return n

    def reserve_now(self) -> int:
        """Whatever free slots there are (up to a batch), without waiting."""
        n = min(self._batch, self.free)
        self.free -= n
        return n

    def take(self, n: int) -> None:
        """Hold ``n`` more slots (items an apply started in the slots its results freed)."""
        self.free -= n

    def release(self, n: int) -> None:
        """Give ``n`` slots back."""
        if n:
            self.free += n
            self._freed.set()


async def _first(a: asyncio.Event, b: asyncio.Event) -> None:
    """Return when either event is set."""
    if b.is_set():
        return
    waits = [asyncio.ensure_future(a.wait()), asyncio.ensure_future(b.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
