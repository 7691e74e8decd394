"""Slow watchers: gRPC WatchGraph streams whose client reads nothing (HTTP/2 flow control
stops the server's writes) while a graph emits many events. The API server's memory stays
bounded (it reads the event log page by page from its cursor and only when the stream can
take more; nothing queues per watcher), a fast watcher of the same graph is not slowed, and
once the slow watchers read again they get every event, equal to ListGraphEvents (after
watching again from their cursor when they were dropped for falling too far behind)."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from relkit import RssSampler, check_watched, kind, rss_mb, watch_grpc

from dago.v1 import execution_pb2, orchestrator_pb2, orchestrator_pb2_grpc
from harness import FULL, RunningStack, knob, request, start_api_quickly, tool
from redisfixture import RedisServer

COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
# API and workers run as processes (python -m dago serve|worker); the full variants
# (RELIABILITY_FULL=1) run for minutes.
pytestmark = [pytest.mark.process, pytest.mark.slow, pytest.mark.timeout(900 if FULL else 300)]
SLOW = 4
# 16 MB of events; a watch holds at most one page (500 events, 1 MB) per stream.
EVENTS = 8000
SIZE = 2000
HOLD_S = knob("RELIABILITY_SLOW_HOLD_S", 5, 60)  # how long the slow watchers read nothing
# Flow control as small as gRPC allows, so a client that does not read stops the server.
SLOW_OPTIONS = [("grpc.http2.bdp_probe", 0), ("grpc.max_receive_message_length", 64 << 20)]


async def test_slow_watchers_do_not_grow_memory_or_slow_others(
    redis_single: RedisServer, key_prefix: str
) -> None:
    async with RunningStack(redis_single.url, key_prefix) as stack:
        stack.start("w1", "worker")
        await start_api_quickly(stack)
        api_pid = stack.procs["api"].pid
        target = f"127.0.0.1:{stack.port}"
        # Warm the API up (first calls allocate), then take the baseline.
        for _ in range(3):
            await stack.client.run(request([tool("e", "echo", inputs={"x": 1})]))
        baseline = rss_mb(api_pid)[0]
        sampler = RssSampler({"api": api_pid}).start()

        gid = await stack.client.submit(
            request([tool("talk", "chatter", inputs={"count": EVENTS, "size": SIZE})])
        )
        channels = [grpc.aio.insecure_channel(target, options=SLOW_OPTIONS) for _ in range(SLOW)]
        calls = []
        first: list[orchestrator_pb2.WatchGraphResponse] = []
        for ch in channels:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(ch)
            call = stub.WatchGraph(orchestrator_pb2.WatchGraphRequest(graph_id=gid), timeout=600)
            first.append(await call.read())  # the stream is open; then it is not read
            calls.append(call)

        t0 = time.monotonic()
        fast = await watch_grpc(target, gid, deadline=120)
        fast_s = time.monotonic() - t0
        stored = await stack.client.history(gid)
        assert kind(stored[-1]) == "graph_completed"
        assert len(stored) > EVENTS
        check_watched(fast, stored)
        assert fast.connects == 1

        # The slow watchers hold their streams, unread, for a while.
        deadline = time.monotonic() + HOLD_S
        while time.monotonic() < deadline:
            assert stack.procs["api"].poll() is None
            await asyncio.sleep(0.5)
        await sampler.stop()
        growth = sampler.peak("api") - baseline
        volume_mb = EVENTS * SIZE / 2**20

        # They read again and get everything, once, in order. A watcher held longer than
        # DAGO_WATCH_MAX_LAG_S (60 s: the full variant) is dropped as too slow when it reads
        # again, naming the last event it was sent; it watches again from there.
        resumed = 0
        for call, head in zip(calls, first, strict=True):
            events = [head.event]
            try:
                while (msg := await call.read()) is not grpc.aio.EOF:
                    events.append(msg.event)
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.ABORTED, e
                events = [e for e in events if kind(e) != "heartbeat"]
                events += await stack.client.watch(gid, after_seq=events[-1].seq)
                resumed += 1
            events = [e for e in events if kind(e) != "heartbeat"]
            assert events == stored
        for ch in channels:
            await ch.close()

        print(
            f"slow watchers: {SLOW} x {volume_mb:.0f} MiB unread for {HOLD_S}s; API RSS "
            f"baseline {baseline:.0f} MiB, peak growth {growth:.1f} MiB; fast watcher read "
            f"{len(stored)} events in {fast_s:.2f}s; {resumed} dropped as too slow and resumed"
        )
        # Buffering per watcher would need SLOW x volume; the bound is one page per stream.
        assert growth < volume_mb, (growth, volume_mb)
        if not FULL:
            assert fast_s < 30, fast_s
