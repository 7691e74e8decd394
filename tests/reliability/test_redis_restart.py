"""Redis killed and restarted under load, with AOF persistence.

- ``appendfsync always``: Redis is SIGKILLed while graphs are submitted and run, then
  restarted on its data. Every graph whose SubmitGraph returned OK completes, once, with a
  contiguous event log; nothing accepted is lost. dago (API and workers) reconnects by
  itself and ``/health`` through Envoy shows the outage (503) and the recovery (200).
- ``appendfsync everysec``: a process crash loses nothing either (the kernel holds what
  Redis wrote), but a power loss can drop the writes of the last second that were not
  fsynced yet. The test simulates that: after the SIGKILL the AOF is cut back to the size it
  had one second earlier (a prefix, as a power loss leaves it). What is lost is bounded and
  detected: only graphs accepted in that last second can be gone, and they answer NOT_FOUND;
  every other graph completes with a contiguous, ordered event log and one terminal event
  (its state rolled back to a consistent earlier point, never half a transition, because
  every transition is one Lua script and so one MULTI/EXEC in the AOF).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from relkit import behind_envoy, histories, kind, until

from dago.v1 import execution_pb2, orchestrator_pb2
from harness import (
    Client,
    RunningStack,
    echo,
    edge,
    knob,
    request,
    rpc_error,
    start_api_quickly,
    tool,
)
from redisfixture import RedisServer

# Envoy in front of API and worker processes; each test ~10 s (load, a crash, a restart).
pytestmark = [pytest.mark.edge, pytest.mark.process, pytest.mark.slow]

COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
NODES = ("start", "left", "right", "join")
BEFORE = knob("RELIABILITY_REDIS_GRAPHS", 30, 150)  # accepted before the crash
AFTER = 10  # accepted after the recovery


def diamond(i: int) -> orchestrator_pb2.SubmitGraphRequest:
    """start -> (left, right: 0.2 s sleeps) -> join."""
    s = {"seconds": 0.2}
    return request(
        [
            echo("start", i=i),
            tool("left", "sleep", inputs=s),
            tool("right", "sleep", inputs=s),
            echo("join", i="{{ nodes.start.output.i }}"),
        ],
        [
            edge("start", "left"),
            edge("start", "right"),
            edge("left", "join"),
            edge("right", "join"),
        ],
    )


class Load:
    """Submits graphs from ``lanes`` concurrent callers until stopped; remembers which
    SubmitGraph calls returned OK (the accepted graphs) and when."""

    def __init__(self, client: Client, lanes: int = 4) -> None:
        self.client = client
        self.lanes = lanes
        self.accepted: list[tuple[str, float]] = []
        self.refused: list[str] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def _lane(self, lane: int) -> None:
        i = 0
        while not self._stop.is_set():
            try:
                gid = await self.client.submit(diamond(lane * 100_000 + i))
                self.accepted.append((gid, time.monotonic()))
            except grpc.aio.AioRpcError as e:
                self.refused.append(e.code().name)
                await asyncio.sleep(0.05)
            i += 1
            await asyncio.sleep(0.02)

    def start(self) -> None:
        """Start submitting."""
        self._tasks = [asyncio.create_task(self._lane(n)) for n in range(self.lanes)]

    async def stop(self) -> None:
        """Stop submitting (in-flight calls finish)."""
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def count(self, n: int, timeout: float = 60) -> None:
        """Wait until ``n`` graphs were accepted."""

        async def enough() -> bool:
            return len(self.accepted) >= n

        await until(enough, timeout, f"{n} graphs accepted")

    async def accepting_for(self, seconds: float, timeout: float = 60) -> None:
        """Wait until graphs have been accepted for ``seconds`` (a faster submit path can
        reach the count sooner than the AOF window a power loss cuts back)."""

        async def long_enough() -> bool:
            return bool(self.accepted) and time.monotonic() - self.accepted[0][1] >= seconds

        await until(long_enough, timeout, f"graphs accepted for {seconds} s")


class AofSizes:
    """Samples the size of the AOF's incremental file every 20 ms (Redis 7 layout)."""

    def __init__(self, redis: RedisServer) -> None:
        self.dir = redis.dir / "appendonlydir"
        self.samples: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None

    def incr(self) -> Path:
        """The incremental AOF file (the one writes go to)."""
        (path,) = self.dir.glob("*.incr.aof")
        return path

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError, ValueError):
                self.samples.append((time.monotonic(), self.incr().stat().st_size))
            await asyncio.sleep(0.02)

    def start(self) -> None:
        """Start sampling."""
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Stop sampling."""
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def size_at(self, t: float) -> int:
        """The last size sampled at or before ``t``."""
        return max((s for at, s in self.samples if at <= t), default=0)


async def check_completed_once(client: Client, gids: list[str]) -> None:
    """Each graph completes, every node once, with a contiguous, ordered event log."""
    for gid in gids:
        st = await client.wait(gid, timeout=60)
        assert st.state == COMPLETED, (gid, st)
    for gid, events in zip(gids, await histories(client, gids), strict=True):
        k = [kind(e) for e in events]
        assert [e.seq for e in events] == list(range(1, len(events) + 1)), (gid, k)
        assert k.count("graph_completed") == 1 and k[-1] == "graph_completed", (gid, k)
        done = [e.node_id for e in events if kind(e) == "node_completed"]
        assert sorted(done) == sorted(NODES), (gid, k)


async def run_through_crash(
    redis: RedisServer, prefix: str, crash: Any
) -> tuple[Load, dict[str, float], float]:
    """API + 2 workers + Envoy under load; ``crash(t_kill)`` runs right after Redis is
    SIGKILLed (before its restart). Returns the load, the /health figures and the kill time."""
    figures: dict[str, float] = {}
    async with behind_envoy(redis.url, prefix) as (stack, envoy, http):
        load = Load(stack.client)
        load.start()
        await load.count(BEFORE)
        await load.accepting_for(getattr(crash, "window", 0.0) + 1.0)

        redis.kill()
        t_kill = time.monotonic()
        await crash(t_kill)

        async def unhealthy() -> bool:
            return await envoy.health(http) == 503

        await until(unhealthy, 15, "/health through Envoy says 503 while Redis is down")
        figures["health_503_after_s"] = time.monotonic() - t_kill
        # Meanwhile the API refuses new graphs with UNAVAILABLE (not an internal error).
        err = await rpc_error(stack.client.submit(diamond(-1)))
        assert err.code() == grpc.StatusCode.UNAVAILABLE, err

        redis.start()
        t_up = time.monotonic()

        async def healthy() -> bool:
            return await envoy.health(http) == 200

        await until(healthy, 30, "/health through Envoy back to 200 after Redis restarted")
        figures["health_200_after_restart_s"] = time.monotonic() - t_up
        n = len(load.accepted)
        await load.count(n + AFTER)
        await load.stop()
        await check_survivors(stack.client, load, t_kill, crash)
        assert all(p.poll() is None for p in stack.procs.values()), "a process exited"
    return load, figures, t_kill


async def check_survivors(client: Client, load: Load, t_kill: float, crash: Any) -> None:
    """Every accepted graph completed once, except (with a simulated power loss) those
    accepted in the lost window, which must answer NOT_FOUND."""
    window = getattr(crash, "window", 0.0)
    lost: list[str] = []
    kept: list[str] = []
    for gid, at in load.accepted:
        try:
            await client.status(gid)
            kept.append(gid)
        except grpc.aio.AioRpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND, (gid, e)
            # Only a graph accepted in the last `window` seconds before the crash may be lost.
            assert window and at >= t_kill - window - 0.25, (gid, t_kill - at, window)
            lost.append(gid)
    crash.lost = lost
    await check_completed_once(client, kept)


class Crash:
    """What happens to the AOF between the SIGKILL and the restart."""

    def __init__(self, redis: RedisServer, window: float = 0.0) -> None:
        self.redis = redis
        self.window = window
        self.lost: list[str] = []
        self.cut_bytes = 0
        self.sizes = AofSizes(redis)

    async def __call__(self, t_kill: float) -> None:
        await self.sizes.stop()
        if not self.window:
            return
        # A power loss leaves the file as it was at the last fsync: cut it back to its size
        # `window` seconds before the crash.
        path = self.sizes.incr()
        size = path.stat().st_size
        keep = self.sizes.size_at(t_kill - self.window)
        assert 0 < keep < size, (keep, size)
        os.truncate(path, keep)
        self.cut_bytes = size - keep


@pytest.mark.parametrize(
    "private_redis", [{"appendonly": True, "appendfsync": "always"}], indirect=True
)
async def test_redis_crash_with_appendfsync_always_loses_nothing(
    private_redis: RedisServer, key_prefix: str
) -> None:
    crash = Crash(private_redis)
    crash.sizes.start()
    load, figures, _ = await run_through_crash(private_redis, key_prefix, crash)
    assert not crash.lost
    assert load.refused, "no SubmitGraph was refused: the outage was not under load"
    print(f"appendfsync always: {len(load.accepted)} accepted, 0 lost, {figures}")


@pytest.mark.parametrize(
    "private_redis", [{"appendonly": True, "appendfsync": "everysec"}], indirect=True
)
async def test_redis_power_loss_with_everysec_loses_at_most_the_last_second_detectably(
    private_redis: RedisServer, key_prefix: str
) -> None:
    crash = Crash(private_redis, window=1.0)
    crash.sizes.start()
    load, figures, _ = await run_through_crash(private_redis, key_prefix, crash)
    assert crash.cut_bytes > 0
    print(
        f"appendfsync everysec + power loss: {len(load.accepted)} accepted, "
        f"{len(crash.lost)} lost (NOT_FOUND), {crash.cut_bytes} AOF bytes cut, {figures}"
    )


@pytest.mark.parametrize(
    "private_redis", [{"appendonly": True, "appendfsync": "always"}], indirect=True
)
async def test_waits_survive_a_redis_restart_with_aof(
    private_redis: RedisServer, key_prefix: str
) -> None:
    """Runs waiting for a signal (one with a timeout) while Redis and every dago process are
    killed and restarted: each is still listed, resumes on its signal, and the timeout fires
    from the restarted API (its timer was in Redis)."""
    waiting = {"id": "review", "wait": {"decisions": ["yes", "no"]}}
    timed = {"id": "review", "wait": {"timeout": "3s", "timeoutDecision": "no"}}
    nodes_after = [echo("after", d="{{ nodes.review.output.decision }}")]
    reqs = [request([waiting, *nodes_after], [edge("review", "after")]) for _ in range(3)]
    reqs.append(request([{**timed, "wait": {**timed["wait"], "decisions": ["yes", "no"]}},
                         *nodes_after], [edge("review", "after")]))  # fmt: skip

    async def all_wait(client: Client, gids: list[str]) -> bool:
        resp = await client.stub.ListWaits(orchestrator_pb2.ListWaitsRequest(), timeout=5)
        return {w.graph_id for w in resp.waits} >= set(gids)

    async with RunningStack(private_redis.url, key_prefix) as stack:
        stack.start("w1", "worker")
        await start_api_quickly(stack)
        gids = [await stack.client.submit(r) for r in reqs]
        await until(lambda: all_wait(stack.client, gids), 20, "every run waits")
        stack.signal("api")
        stack.signal("w1")
        private_redis.kill()
        private_redis.start()
        stack.start("w1", "worker")
        await start_api_quickly(stack)
        # (The one with a timeout may have timed out by now.)
        await until(lambda: all_wait(stack.client, gids[:3]), 20, "every run still waits")
        for i, gid in enumerate(gids[:3]):
            await stack.client.stub.SignalGraph(
                orchestrator_pb2.SignalGraphRequest(
                    graph_id=gid, node_id="review", decision="yes" if i % 2 else "no"
                ),
                timeout=10,
            )
        for i, gid in enumerate(gids):
            st = await stack.client.wait(gid, timeout=30)
            assert st.state == COMPLETED, st
            after = next(n for n in st.nodes if n.node_id == "after")
            want = "yes" if i % 2 and i < 3 else "no"
            assert after.output.struct_value.fields["d"].string_value == want, (i, st)
