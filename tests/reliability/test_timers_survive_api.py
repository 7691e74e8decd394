"""Retries and deadlines are held in Redis (a sorted set swept by every API replica), not in
timers of one process: with two API replicas, the one that scheduled them is SIGKILLed and
the other fires them; with no API at all, they are not lost but fire as soon as an API
starts again."""

from __future__ import annotations

import asyncio
import signal
import time

import pytest
from relkit import kind, until

from dago.v1 import execution_pb2, graph_pb2, orchestrator_pb2
from harness import (
    Client,
    RunningStack,
    echo,
    edge,
    free_port,
    node_status,
    of_kind,
    port_open,
    request,
    start_api_quickly,
    tool,
)
from redisfixture import RedisServer

# API and workers run as processes (python -m dago serve|worker).
pytestmark = pytest.mark.process

COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
FAILED = execution_pb2.GRAPH_STATE_FAILED


def retried(backoff: str) -> orchestrator_pb2.SubmitGraphRequest:
    """A node that fails once, retried after ``backoff``, then an echo."""
    policy = {"maxAttempts": 2, "initialBackoff": backoff, "maxBackoff": backoff, "jitter": 0}
    return request(
        [
            tool("f", "flaky", inputs={"fail_attempts": 1, "value": "v"}, retry=policy),
            echo("after", v="{{ nodes.f.output.value }}"),
        ],
        [edge("f", "after")],
    )


async def retrying(client: Client, gid: str) -> bool:
    """True once the graph's first attempt failed and its retry is scheduled."""
    return bool(of_kind(await client.history(gid), "node_retrying", "f"))


async def test_retries_and_deadlines_fire_without_the_api_that_scheduled_them(
    redis_single: RedisServer, key_prefix: str
) -> None:
    async with RunningStack(redis_single.url, key_prefix) as stack:
        stack.start("w1", "worker")
        await start_api_quickly(stack)
        port2 = free_port()
        stack.start("api2", "serve", DAGO_GRPC_PORT=str(port2))
        await port_open(port2)
        other = Client(f"127.0.0.1:{port2}")
        try:
            # Scheduled through the first replica, which then dies.
            r = await stack.client.submit(retried("2s"))
            d = await stack.client.submit(
                request(
                    [tool("slow", "sleep", inputs={"seconds": 30}), echo("after")],
                    [edge("slow", "after")],
                    limits={"deadline": "3s"},
                )
            )
            t0 = time.monotonic()
            await until(lambda: retrying(stack.client, r), 20, "the retry is scheduled")
            stack.signal("api", signal.SIGKILL)

            st = await other.wait(r, timeout=30)
            assert st.state == COMPLETED, st
            assert [a.attempt for a in node_status(st, "f").attempts] == [1, 2]
            st = await other.wait(d, timeout=30)
            assert st.state == FAILED and "deadline" in st.error.message, st
            assert st.error.error_class == graph_pb2.ERROR_CLASS_LIMIT
            assert time.monotonic() - t0 >= 2.9  # not before the deadline

            # No API at all while a retry comes due: it fires once an API is back.
            r2 = await other.submit(retried("1s"))
            await until(lambda: retrying(other, r2), 20, "the second retry is scheduled")
            stack.signal("api2", signal.SIGKILL)
            await asyncio.sleep(2)  # the retry comes due while no API runs (the point here)
            await stack.client.close()
            stack.client = Client(f"127.0.0.1:{stack.port}")
            await start_api_quickly(stack)
            st = await stack.client.wait(r2, timeout=30)
            assert st.state == COMPLETED, st
            events = await stack.client.history(r2)
            assert [kind(e) for e in events if e.node_id == "f"] == [
                "node_started",
                "node_retrying",
                "node_started",
                "node_completed",
            ]
        finally:
            await other.close()
