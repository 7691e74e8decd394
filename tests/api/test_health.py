"""Health follows Redis and the workers; workers register, heartbeat and age out."""

from __future__ import annotations

import signal
import socket
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from dago.v1 import orchestrator_pb2
from harness import (
    ProcessStack,
    RunningStack,
    eventually,
    port_open,
    request,
    start_api_quickly,
    tool,
)
from obshelpers import envoy
from redisfixture import RedisServer

# API and workers run as processes (python -m dago serve|worker).
pytestmark = pytest.mark.process

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
ENV = {"DAGO_WORKER_HEARTBEAT_MS": "200", "DAGO_WORKER_TTL_MS": "1000", "DAGO_AUTH": "off"}


async def health(stack: ProcessStack, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(stack.client.channel)
    r = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)  # type: ignore[attr-defined]
    return int(r.status)


async def becomes(stack: ProcessStack, status: int, timeout: float = 10) -> None:
    async def check() -> bool:
        for service in ("", "dago.v1.OrchestratorService"):
            try:
                if await health(stack, service) != status:
                    return False
            except grpc.aio.AioRpcError:
                return False
        return True

    await eventually(check, timeout, 0.05)


async def workers(stack: ProcessStack) -> dict[str, orchestrator_pb2.WorkerInfo]:
    resp = await stack.client.stub.ListWorkers(orchestrator_pb2.ListWorkersRequest(), timeout=5)
    return {w.worker_id: w for w in resp.workers}


@pytest.mark.edge
async def test_workers_register_heartbeat_and_age_out_and_health_needs_one(
    redis_single: RedisServer, key_prefix: str
) -> None:
    async with RunningStack(redis_single.url, key_prefix, **ENV) as stack:
        stack.start("api", "serve")
        await port_open(stack.port)
        # Redis answers but no worker runs: nothing would execute graphs.
        await becomes(stack, NOT_SERVING)
        assert await workers(stack) == {}

        before = time.time()
        w1 = stack.start("w1", "worker")
        w2 = stack.start("w2", "worker", DAGO_WORKER_SLOTS="3")
        await becomes(stack, SERVING, 20)

        async def both() -> bool:
            return set(await workers(stack)) == {"w1", "w2"}

        await eventually(both, 10, 0.05)
        seen = await workers(stack)
        assert seen["w1"].pid == w1.pid and seen["w2"].pid == w2.pid
        assert seen["w1"].host == socket.gethostname()
        assert (seen["w1"].slots, seen["w2"].slots) == (64, 3)
        assert {"tool", "llm", "http", "router"} <= set(seen["w1"].node_kinds)
        for w in seen.values():
            start = w.start_time.ToMilliseconds() / 1000
            beat = w.last_heartbeat_time.ToMilliseconds() / 1000
            assert before - 1 <= start <= beat <= time.time() + 1
            assert w.in_flight == 0

        # Heartbeats carry what runs: a sleeping node shows as in flight.
        gid = await stack.client.submit(
            request([tool("s", "sleep", inputs={"seconds": 1.5})], name="busy")
        )

        async def busy() -> bool:
            return sum(w.in_flight for w in (await workers(stack)).values()) == 1

        await eventually(busy, 10, 0.05)

        async with envoy(stack) as http:
            r = await http.get("/api/v1/workers")
            assert r.status_code == 200, r.text
            listed = {w["worker_id"]: w for w in r.json()["workers"]}
            assert set(listed) == {"w1", "w2"}
            assert listed["w2"]["slots"] == 3 and listed["w2"]["pid"] == w2.pid

            # A killed worker cannot say goodbye: it ages out after the TTL (1 s here).
            stack.signal("w1", signal.SIGKILL)
            killed = time.monotonic()

            async def only_w2() -> bool:
                return set(await workers(stack)) == {"w2"}

            await eventually(only_w2, 10, 0.05)
            assert time.monotonic() - killed < 5
            await becomes(stack, SERVING)
            await stack.client.wait(gid, timeout=20)  # reclaimed by w2 if w1 ran it

            # A worker stopped with SIGTERM deregisters at once; with none left: NOT_SERVING.
            stack.signal("w2", signal.SIGTERM)
            assert await workers(stack) == {}
            await becomes(stack, NOT_SERVING)

            async def unhealthy() -> bool:
                return (await http.get("/health")).status_code == 503

            await eventually(unhealthy, 10, 0.05)

            # And back when a worker starts.
            stack.start("w3", "worker")
            await becomes(stack, SERVING, 20)
            assert set(await workers(stack)) == {"w3"}


async def test_health_flips_with_redis_down_and_back(
    private_redis: RedisServer, key_prefix: str
) -> None:
    async with RunningStack(private_redis.url, key_prefix, **ENV) as stack:
        stack.start("w1", "worker")
        await start_api_quickly(stack)
        await becomes(stack, SERVING)
        private_redis.stop()
        await becomes(stack, NOT_SERVING, 10)
        private_redis.start()
        # The Redis came back empty: the worker registers again with its next heartbeat.
        await becomes(stack, SERVING, 20)
        assert set(await workers(stack)) == {"w1"}
        gid, st = await stack.client.run(request([tool("e", "echo", inputs={"x": 1})]))
        assert st.state == 3, (gid, st)
