"""The API server SIGKILLed while 50 graphs run and a watcher is attached to each: the
workers finish the graphs without it; every watcher reconnects (to the restarted API on the
same address) and resumes from its cursor, ending with the full, ordered event list, equal
to ListGraphEvents."""

from __future__ import annotations

import asyncio
import signal

import pytest
from relkit import Watched, check_watched, histories, kind, until, watch_grpc

from dago.v1 import execution_pb2, orchestrator_pb2
from harness import RunningStack, echo, edge, knob, request, start_api_quickly, tool
from redisfixture import RedisServer

# API and workers run as processes (python -m dago serve|worker).
pytestmark = pytest.mark.process

COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
GRAPHS = knob("RELIABILITY_API_KILL_GRAPHS", 50, 50)


def steps(i: int) -> orchestrator_pb2.SubmitGraphRequest:
    """A graph that runs ~3 s: a chain of sleeps with a fan-out and a join."""
    s = {"seconds": 0.6}
    return request(
        [
            echo("start", i=i),
            tool("s1", "sleep", inputs=s),
            tool("s2", "sleep", inputs=s),
            tool("s3", "sleep", inputs=s),
            tool("left", "sleep", inputs=s),
            tool("right", "sleep", inputs=s),
            echo("join", i="{{ nodes.start.output.i }}"),
        ],
        [
            edge("start", "s1"),
            edge("s1", "s2"),
            edge("s2", "s3"),
            edge("s3", "left"),
            edge("s3", "right"),
            edge("left", "join"),
            edge("right", "join"),
        ],
    )


async def test_api_killed_with_50_graphs_and_watchers(
    redis_single: RedisServer, key_prefix: str
) -> None:
    async with RunningStack(redis_single.url, key_prefix) as stack:
        stack.start("w1", "worker")
        stack.start("w2", "worker")
        await start_api_quickly(stack)
        target = f"127.0.0.1:{stack.port}"
        gids = list(await asyncio.gather(*(stack.client.submit(steps(i)) for i in range(GRAPHS))))
        seen = [Watched(g, "grpc") for g in gids]
        watchers = [
            asyncio.create_task(watch_grpc(target, g, deadline=90, w=w))
            for g, w in zip(gids, seen, strict=True)
        ]

        # Kill the API once every watcher is attached (its first events arrived) and while
        # graphs still run.
        async def attached() -> bool:
            return all(w.events for w in seen)

        await until(attached, 30, "every watcher received its first events")
        stored = await histories(stack.client, gids)
        running_at_kill = sum(1 for h in stored if kind(h[-1]) != "graph_completed")
        stack.signal("api", signal.SIGKILL)
        assert running_at_kill > 0, "every graph finished before the kill: nothing was tested"

        await start_api_quickly(stack)
        await asyncio.wait_for(asyncio.gather(*watchers), 120)

        for gid in gids:
            st = await stack.client.wait(gid, timeout=30)
            assert st.state == COMPLETED, (gid, st)
        stored = await histories(stack.client, gids)
        for w, h in zip(seen, stored, strict=True):
            assert [kind(e) for e in h].count("graph_completed") == 1
            check_watched(w, h)
        reconnected = sum(1 for w in seen if w.connects > 1)
        assert reconnected >= running_at_kill, (reconnected, running_at_kill)
