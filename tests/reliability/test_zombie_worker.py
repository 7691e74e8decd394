"""A worker frozen (SIGSTOP) in the middle of an attempt for longer than its lease, as a
long GC pause or a stalled VM would: another worker reclaims the attempt and completes the
graph. When the frozen worker resumes (SIGCONT) and reports its late result for the same
attempt, the fence on (graph, node, iteration, attempt) makes it change nothing: the event
log, the status and the result stay as they were, and the zombie frees its slot."""

from __future__ import annotations

import signal
import time

import pytest
from google.protobuf import json_format
from relkit import kind, until

from dago.v1 import execution_pb2
from harness import RunningStack, echo, edge, of_kind, redis_store, request, start_api_quickly, tool
from redisfixture import RedisServer

# API and workers run as processes (python -m dago serve|worker).
pytestmark = pytest.mark.process

COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED


async def test_frozen_worker_late_result_is_fenced_out(
    redis_single: RedisServer, key_prefix: str
) -> None:
    req = request(
        [
            tool("s", "sleep", inputs={"seconds": 2}),
            echo("after", slept="{{ nodes.s.output.slept }}"),
        ],
        [edge("s", "after")],
    )
    store = redis_store(redis_single.url, key_prefix)
    async with RunningStack(redis_single.url, key_prefix) as stack:
        try:
            stack.start("w1", "worker")
            stack.start("w2", "worker")
            await start_api_quickly(stack)
            gid = await stack.client.submit(req)

            async def started() -> bool:
                return bool(of_kind(await stack.client.history(gid), "node_started", "s"))

            await until(started, 30, "node s started")
            events = await stack.client.history(gid)
            zombie = of_kind(events, "node_started", "s")[0].node_started.worker_id
            stack.procs[zombie].send_signal(signal.SIGSTOP)
            try:
                st = await stack.client.wait(gid, timeout=40)
            finally:
                stack.procs[zombie].send_signal(signal.SIGCONT)
            resumed_ms = time.time() * 1000
            assert st.state == COMPLETED, st
            before = await stack.client.history(gid)
            result = await stack.client.result(gid)

            # The zombie wakes up (its heartbeat after SIGCONT shows it runs again), finishes
            # its sleep and reports it. Then it is the only worker left: the next graph runs
            # on it, and its results are applied in order, so once that graph completed the
            # zombie's late report was handled too.
            async def zombie_awake() -> bool:
                seen = await store.redis.zscore(store.keys.workers_seen, zombie)
                return seen is not None and seen > resumed_ms

            await until(zombie_awake, 30, "the resumed worker heartbeats again")
            starts = of_kind(before, "node_started", "s")
            assert len(starts) == 2, [kind(e) for e in before]
            rescuer = starts[1].node_started.worker_id
            assert rescuer not in ("", zombie)
            stack.signal(rescuer, signal.SIGTERM)
            gid2, next_st = await stack.client.run(request([echo("e", x=1)]), timeout=30)
            assert next_st.state == COMPLETED, next_st
            (ran,) = of_kind(await stack.client.history(gid2), "node_started", "e")
            assert ran.node_started.worker_id == zombie
            assert stack.procs[zombie].poll() is None, "the zombie exited"

            after = await stack.client.history(gid)
            assert after == before, [kind(e) for e in after[len(before) :]]
            assert [kind(e) for e in after if e.node_id == "s"] == [
                "node_started",
                "node_started",
                "node_completed",
            ]
            s = next(n for n in (await stack.client.status(gid)).nodes if n.node_id == "s")
            # Each execution has its own record: the zombie's ended when the rescuer's
            # started, and the rescuer's times are its own.
            assert [(a.attempt, a.execution, a.state, a.worker_id) for a in s.attempts] == [
                (1, 1, execution_pb2.NODE_STATE_RECLAIMED, zombie),
                (1, 2, execution_pb2.NODE_STATE_COMPLETED, rescuer),
            ]
            first, second = s.attempts
            assert first.start_time == starts[0].time
            assert second.start_time == starts[1].time
            assert first.end_time.ToMilliseconds() <= second.start_time.ToMilliseconds()
            assert second.end_time.ToMilliseconds() - second.start_time.ToMilliseconds() >= 2000
            assert await stack.client.result(gid) == result
            assert json_format.MessageToDict(result.output) == {"after": {"slept": 2}}
        finally:
            await store.redis.aclose()
