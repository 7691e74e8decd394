"""Fair admission to the API's compile thread: checking a graph is the only CPU a request
makes the API spend, so its callers queue here, one queue per namespace, served in turn."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class QueueFull(Exception):
    """A namespace already has as many requests waiting as it may."""


class FairGate:
    """Lets at most ``slots`` holders in at once. Waiters are let in round-robin over their
    keys (namespaces), first come first served within one key, so a tenant that floods the
    gate delays another tenant's request by at most one of its own per turn. A key with
    ``max_waiting`` requests waiting gets ``QueueFull`` for the next one; a waiter that is
    cancelled (its caller gave up) leaves the queue."""

    def __init__(self, slots: int, max_waiting: int) -> None:
        self._free = slots
        self._max_waiting = max_waiting
        self._queues: dict[str, deque[asyncio.Future[None]]] = {}
        self._turns: deque[str] = deque()

    def waiting(self, key: str) -> int:
        """Requests of ``key`` waiting to be let in."""
        return len(self._queues.get(key, ()))

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> AsyncIterator[None]:
        """Wait for a slot (in ``key``'s turn), hold it for the block."""
        if self._free > 0 and not self._turns:
            self._free -= 1
        else:
            await self._wait(key)
        try:
            yield
        finally:
            self._release()

    async def _wait(self, key: str) -> None:
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
            self._turns.append(key)
        if len(queue) >= self._max_waiting:
            raise QueueFull(key)
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue.append(granted)
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():
                self._release()  # let in as it gave up: the slot goes on
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(granted)
            raise

    def _release(self) -> None:
        """Hand the slot to the first waiter of the next key in turn, or free it."""
        while self._turns:
            key = self._turns.popleft()
            queue = self._queues[key]
            granted = queue.popleft() if queue else None
            if queue:
                self._turns.append(key)
            else:
                del self._queues[key]
            if granted is not None and not granted.done():
                granted.set_result(None)
                return
        self._free += 1
