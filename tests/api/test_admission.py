"""``dago.api.admission.FairGate``: namespaces take turns at the compile thread."""

from __future__ import annotations

import asyncio

import pytest

from dago.api.admission import FairGate, QueueFull


async def _holder(gate: FairGate, key: str, order: list[str], release: asyncio.Event) -> None:
    async with gate.hold(key):
        order.append(key)
        await release.wait()


async def test_waiters_are_let_in_by_turns_of_their_namespace() -> None:
    gate = FairGate(slots=1, max_waiting=100)
    order: list[str] = []
    go = asyncio.Event()
    go.set()
    first = asyncio.Event()
    busy = asyncio.create_task(_holder(gate, "flood", order, first))
    await asyncio.sleep(0)
    # A flood of one namespace queues first, then one request of another.
    tasks = [asyncio.create_task(_holder(gate, "flood", order, go)) for _ in range(5)]
    await asyncio.sleep(0)
    tasks.append(asyncio.create_task(_holder(gate, "quiet", order, go)))
    await asyncio.sleep(0)
    first.set()
    await asyncio.gather(busy, *tasks)
    # The quiet namespace waited for one of the flood's requests, not for all five.
    assert order == ["flood", "flood", "quiet", "flood", "flood", "flood", "flood"]


async def test_a_namespace_with_too_many_waiting_is_refused_others_are_not() -> None:
    gate = FairGate(slots=1, max_waiting=2)
    release = asyncio.Event()
    order: list[str] = []
    holders = [asyncio.create_task(_holder(gate, "a", order, release)) for _ in range(3)]
    await asyncio.sleep(0)
    assert gate.waiting("a") == 2
    with pytest.raises(QueueFull):
        async with gate.hold("a"):
            pass
    other = asyncio.create_task(_holder(gate, "b", order, release))
    await asyncio.sleep(0)
    assert gate.waiting("b") == 1
    release.set()
    await asyncio.gather(*holders, other)
    assert sorted(order) == ["a", "a", "a", "b"]


async def test_a_waiter_that_gives_up_leaves_the_queue_and_the_slot_goes_on() -> None:
    gate = FairGate(slots=1, max_waiting=10)
    release = asyncio.Event()
    order: list[str] = []
    busy = asyncio.create_task(_holder(gate, "a", order, release))
    await asyncio.sleep(0)
    quitter = asyncio.create_task(_holder(gate, "b", order, release))
    last = asyncio.create_task(_holder(gate, "c", order, release))
    await asyncio.sleep(0)
    quitter.cancel()
    release.set()
    await asyncio.gather(busy, last)
    assert quitter.cancelled() and order == ["a", "c"]
    # Nothing is held any more: the next caller gets in at once.
    async with asyncio.timeout(1):
        async with gate.hold("d"):
            pass
