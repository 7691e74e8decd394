"""Envoy SIGKILLed and restarted on the same port while graphs run: REST SSE watchers
(resuming with ``Last-Event-ID``), binary gRPC-Web watchers (the TypeScript client's
protocol, resuming with ``after_seq``) and native gRPC watchers through Envoy reconnect and
end with every event once, in order, equal to ListGraphEvents."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from relkit import (
    Envoy,
    Watched,
    check_watched,
    histories,
    kind,
    until,
    watch_grpc,
    watch_grpc_web,
    watch_sse,
)

from dago.v1 import execution_pb2, orchestrator_pb2
from harness import RunningStack, echo, edge, free_port, request, start_api_quickly, tool
from redisfixture import RedisServer

# Envoy in front of API and worker processes.
pytestmark = [pytest.mark.edge, pytest.mark.process]

COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
PER_KIND = 4


def chain(i: int) -> orchestrator_pb2.SubmitGraphRequest:
    """About 3.5 s of sleeps in a chain, then an echo."""
    names = [f"s{n}" for n in range(5)]
    nodes = [tool(n, "sleep", inputs={"seconds": 0.7}) for n in names] + [echo("z", i=i)]
    return request(nodes, [edge(a, b) for a, b in zip(names, [*names[1:], "z"], strict=True)])


async def test_watchers_through_envoy_resume_after_envoy_restart(
    redis_single: RedisServer, key_prefix: str
) -> None:
    metrics = free_port()
    async with RunningStack(
        redis_single.url, key_prefix, DAGO_METRICS_PORT=str(metrics), DAGO_HEARTBEAT_MS="300"
    ) as stack:
        envoy = Envoy(stack, metrics)
        async with httpx.AsyncClient() as http:
            try:
                stack.start("w1", "worker")
                await start_api_quickly(stack)
                envoy.start()
                await envoy.wait_healthy(http)
                n = 3 * PER_KIND
                gids = list(
                    await asyncio.gather(*(stack.client.submit(chain(i)) for i in range(n)))
                )
                hows = ["sse", "grpc-web", "grpc"] * PER_KIND
                seen = [Watched(g, how) for g, how in zip(gids, hows, strict=True)]
                target = f"127.0.0.1:{envoy.port}"
                tasks = []
                for w in seen:
                    if w.how == "sse":
                        coro = watch_sse(envoy.base, w.graph_id, 90, w)
                    elif w.how == "grpc-web":
                        coro = watch_grpc_web(envoy.base, w.graph_id, 90, w)
                    else:
                        coro = watch_grpc(target, w.graph_id, "grpc", 90, w)
                    tasks.append(asyncio.create_task(coro))

                async def attached() -> bool:
                    return all(w.events for w in seen)

                await until(attached, 30, "every watcher received its first events")
                envoy.kill()
                stored = await histories(stack.client, gids)
                running = sum(1 for h in stored if kind(h[-1]) != "graph_completed")
                assert running > 0, "every graph finished before Envoy died: nothing tested"
                await asyncio.sleep(0.3)  # an outage the watchers notice
                envoy.start()
                await envoy.wait_healthy(http)
                await asyncio.wait_for(asyncio.gather(*tasks), 120)
            finally:
                envoy.stop()

        stored = await histories(stack.client, gids)
        for w, h in zip(seen, stored, strict=True):
            assert kind(h[-1]) == "graph_completed", (w.graph_id, [kind(e) for e in h])
            check_watched(w, h)
        for how in ("sse", "grpc-web", "grpc"):
            mine = [w for w in seen if w.how == how]
            assert any(w.connects > 1 for w in mine), (how, [w.errors for w in mine])
