"""Every start of a node attempt is an execution with a record of its own, from its start:
RUNNING while it runs, then how it ended (cancelled with its graph; reclaimed when its
work item was taken over, and the next execution runs it again). A worker restarted under
its old name takes back what it held at once; a worker that froze past its lease never
reclaims its own item; the work groups forget consumers of workers long gone. Against real
processes (python -m dago serve|worker)."""

from __future__ import annotations

import signal
import time

import pytest
from relkit import until

from dago.engine.ids import parse_shard
from dago.v1 import execution_pb2, orchestrator_pb2
from harness import (
    RunningStack,
    echo,
    edge,
    node_status,
    of_kind,
    port_open,
    redis_store,
    request,
    start_api_quickly,
    tool,
)
from redisfixture import RedisServer

pytestmark = pytest.mark.process

RUNNING = execution_pb2.NODE_STATE_RUNNING
COMPLETED = execution_pb2.NODE_STATE_COMPLETED
CANCELLED = execution_pb2.NODE_STATE_CANCELLED
RECLAIMED = execution_pb2.NODE_STATE_RECLAIMED


def executions(st: execution_pb2.GraphStatus, node: str) -> list[tuple[int, int, int, str]]:
    """(attempt, execution, state, worker) of each recorded execution of ``node``."""
    (ns,) = [n for n in st.nodes if n.node_id == node]
    return [(a.attempt, a.execution, a.state, a.worker_id) for a in ns.attempts]


async def test_an_attempt_is_recorded_from_its_start_and_when_cancelled(
    redis_single: RedisServer, key_prefix: str
) -> None:
    async with RunningStack(redis_single.url, key_prefix) as stack:
        stack.start("w1", "worker")
        await start_api_quickly(stack)
        gid = await stack.client.submit(request([tool("s", "sleep", inputs={"seconds": 60})]))

        async def started() -> bool:
            return bool(of_kind(await stack.client.history(gid), "node_started", "s"))

        await until(started, 30, "node s started")
        st = await stack.client.status(gid)
        assert executions(st, "s") == [(1, 1, RUNNING, "w1")]
        (running,) = next(n for n in st.nodes if n.node_id == "s").attempts
        assert running.start_time.ToMilliseconds() > 0
        assert not running.HasField("end_time")
        page = await stack.client.stub.ListNodeAttempts(
            orchestrator_pb2.ListNodeAttemptsRequest(graph_id=gid, node_id="s"), timeout=10
        )
        assert [(a.execution, a.state) for a in page.attempts] == [(1, RUNNING)]

        await stack.client.stub.CancelGraph(
            orchestrator_pb2.CancelGraphRequest(graph_id=gid), timeout=10
        )
        st = await stack.client.wait(gid, timeout=20)
        assert st.state == execution_pb2.GRAPH_STATE_CANCELLED
        assert executions(st, "s") == [(1, 1, CANCELLED, "w1")]
        (ended,) = next(n for n in st.nodes if n.node_id == "s").attempts
        assert ended.start_time == running.start_time
        assert ended.end_time.ToMilliseconds() >= ended.start_time.ToMilliseconds()


async def test_a_restarted_worker_takes_back_its_items_at_once(
    redis_single: RedisServer, key_prefix: str
) -> None:
    # A lease far longer than the test: only taking back its own items at start lets the
    # restarted worker run the node again in time.
    async with RunningStack(redis_single.url, key_prefix, DAGO_LEASE_MS="120000") as stack:
        stack.start("w1", "worker")
        await start_api_quickly(stack)
        gid = await stack.client.submit(request([tool("s", "sleep", inputs={"seconds": 2})]))

        async def started() -> bool:
            return bool(of_kind(await stack.client.history(gid), "node_started", "s"))

        await until(started, 30, "node s started")
        first = (await stack.client.status(gid)).nodes[0].attempts[0]
        stack.signal("w1")  # SIGKILL: as a crash
        restarted = time.monotonic()
        stack.start("w1", "worker")
        st = await stack.client.wait(gid, timeout=40)
        assert st.state == execution_pb2.GRAPH_STATE_COMPLETED, st
        assert time.monotonic() - restarted < 30
        assert executions(st, "s") == [(1, 1, RECLAIMED, "w1"), (1, 2, COMPLETED, "w1")]
        one, two = st.nodes[0].attempts
        # Each execution keeps its own times: the first ended when the second started.
        assert one.start_time == first.start_time
        assert one.end_time.ToMilliseconds() <= two.start_time.ToMilliseconds()
        assert two.end_time.ToMilliseconds() - two.start_time.ToMilliseconds() >= 2000
        assert "reclaimed 1 work items this worker held before it restarted" in stack.log("w1")


async def test_a_worker_frozen_past_its_lease_does_not_reclaim_its_own_item(
    redis_single: RedisServer, key_prefix: str
) -> None:
    async with RunningStack(redis_single.url, key_prefix, DAGO_LEASE_MS="1000") as stack:
        stack.start("w1", "worker")
        await start_api_quickly(stack)
        gid = await stack.client.submit(request([tool("s", "sleep", inputs={"seconds": 3})]))

        async def started() -> bool:
            return bool(of_kind(await stack.client.history(gid), "node_started", "s"))

        await until(started, 30, "node s started")
        # Frozen for several leases: when it wakes, its renewals and its reclaim rounds are
        # all overdue, and its own item is idle past the lease.
        stack.procs["w1"].send_signal(signal.SIGSTOP)
        try:
            store = redis_store(redis_single.url, key_prefix)
            try:

                async def idle_past_lease() -> bool:
                    for shard in range(4):
                        if await store.idle_items(shard, 3000, 10):
                            return True
                    return False

                await until(idle_past_lease, 30, "the frozen worker's item idle past the lease")
            finally:
                await store.redis.aclose()
        finally:
            stack.procs["w1"].send_signal(signal.SIGCONT)
        st = await stack.client.wait(gid, timeout=30)
        assert st.state == execution_pb2.GRAPH_STATE_COMPLETED, st
        assert executions(st, "s") == [(1, 1, COMPLETED, "w1")]
        starts = of_kind(await stack.client.history(gid), "node_started", "s")
        assert len(starts) == 1
        assert "reclaimed" not in stack.log("w1")


async def test_an_inline_item_of_a_killed_worker_is_reclaimed_and_runs_once(
    redis_single: RedisServer, key_prefix: str
) -> None:
    """An inline node's item is delivered without a start: a worker killed after taking it
    (played here by the test, which takes it as "w-killed" and never reports) leaves the
    node queued and the item pending. After the lease a live worker reclaims it, runs it
    inline and applies it: one node_started (redelivered), one node_completed, one record,
    the next node run, the log gapless."""
    async with RunningStack(redis_single.url, key_prefix, DAGO_LEASE_MS="1000") as stack:
        # No worker yet (health is NOT_SERVING until one heartbeats): only the port.
        stack.start("api", "serve")
        await port_open(stack.port)
        req = request([echo("a", v=1), echo("b", v="{{ nodes.a.output.v }}")], [edge("a", "b")])
        gid = await stack.client.submit(req)
        shard = parse_shard(gid, 4)
        assert shard is not None
        store = redis_store(redis_single.url, key_prefix)
        try:
            await store.ensure_groups()  # a worker would have created them
            taken = await store.take([shard], "w-killed", 10, 1000)
        finally:
            await store.redis.aclose()
        (dead,) = taken.started
        assert (dead.item.node, dead.item.started) == ("a", False)
        st = await stack.client.status(gid)
        assert node_status(st, "a").state == execution_pb2.NODE_STATE_QUEUED

        stack.start("w1", "worker")
        st = await stack.client.wait(gid, timeout=40)
        assert st.state == execution_pb2.GRAPH_STATE_COMPLETED, st
        assert executions(st, "a") == [(1, 1, COMPLETED, "w1")]
        assert executions(st, "b") == [(1, 1, COMPLETED, "w1")]
        events = await stack.client.history(gid)
        (started,) = of_kind(events, "node_started", "a")
        assert started.node_started.redelivered and started.node_started.worker_id == "w1"
        assert len(of_kind(events, "node_completed", "a")) == 1
        (b_started,) = of_kind(events, "node_started", "b")
        assert not b_started.node_started.redelivered
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
        assert "reclaimed 1 work items left idle" in stack.log("w1")


async def test_consumers_of_workers_gone_are_removed(
    redis_single: RedisServer, key_prefix: str
) -> None:
    store = redis_store(redis_single.url, key_prefix)

    async def consumers() -> dict[str, int]:
        """Consumer name -> pending items, over every shard's work group."""
        out: dict[str, int] = {}
        for shard in range(4):
            key = store.keys.shard(shard).work
            if not await store.redis.exists(key):
                continue
            for c in await store.redis.xinfo_consumers(key, "workers"):
                name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
                out[name] = out.get(name, 0) + int(c["pending"])
        return out

    env = {
        "DAGO_WORKER_TTL_MS": "1500",
        "DAGO_WORKER_HEARTBEAT_MS": "200",
        "DAGO_LEASE_MS": "120000",
    }
    try:
        async with RunningStack(redis_single.url, key_prefix, **env) as stack:
            stack.start("api", "serve")
            # Workers that come and go under new names, as restarts in a cluster do; each
            # runs a graph (a consumer is made by the first read that delivers something).
            for name in ("gone1", "gone2", "gone3"):
                stack.start(name, "worker")
                await stack.wait_serving()
                _, st = await stack.client.run(request([echo("e", x=1)]), timeout=30)
                assert st.state == execution_pb2.GRAPH_STATE_COMPLETED
                assert name in await consumers()
                stack.signal(name, signal.SIGTERM)
            # One dies holding an item: its consumer keeps it (pending) for the reclaim.
            stack.start("holder", "worker")
            await stack.wait_serving()
            gid = await stack.client.submit(request([tool("s", "sleep", inputs={"seconds": 60})]))

            async def started() -> bool:
                return bool(of_kind(await stack.client.history(gid), "node_started", "s"))

            await until(started, 30, "node s started")
            stack.signal("holder")

            async def pruned() -> bool:
                return not {"gone1", "gone2", "gone3"} & (await consumers()).keys()

            await until(pruned, 30, "the consumers of the workers gone removed")
            assert (await consumers()).get("holder") == 1
            assert "removed" in stack.log("api")
    finally:
        await store.redis.aclose()
