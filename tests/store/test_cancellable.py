"""``cancellable``: a caller cancelled while redis-py swallows the cancellation (it can, while
it opens a connection) is cancelled at once instead of waiting out the command, e.g. a
2 s XREAD BLOCK that held a worker stopped right after it started."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from dago.store.client import cancellable


async def _swallowing(started: asyncio.Event, release: asyncio.Event) -> str:
    """What redis-py can do: absorb a cancellation while "connecting", then go on to a
    blocking command (here: until ``release``)."""
    started.set()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(3600)  # connecting
    await release.wait()  # the blocking read
    return "late"


async def _cancel_when_started(aw: asyncio.Task[str], started: asyncio.Event) -> set[object]:
    await started.wait()
    aw.cancel()
    done, _ = await asyncio.wait({aw}, timeout=10)
    return set(done)


async def test_without_it_a_swallowed_cancellation_holds_the_caller() -> None:
    """The premise: awaited directly, the caller runs on until the command ends."""
    started, release = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(_swallowing(started, release))
    await started.wait()
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.2)
    assert not done
    release.set()
    assert await task == "late"


async def test_the_caller_is_cancelled_at_once_and_the_command_left_to_end() -> None:
    started, release = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(cancellable(_swallowing(started, release)))
    assert await _cancel_when_started(task, started) == {task}  # before the release
    assert task.cancelled()
    release.set()  # the abandoned command ends; its outcome is dropped, nothing logged
    await asyncio.sleep(0)


async def test_results_and_errors_pass_through() -> None:
    async def value() -> int:
        await asyncio.sleep(0)
        return 7

    async def error() -> int:
        await asyncio.sleep(0)
        raise ValueError("refused")

    assert await cancellable(value()) == 7
    with pytest.raises(ValueError, match="refused"):
        await cancellable(error())
