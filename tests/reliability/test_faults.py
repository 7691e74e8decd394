"""Fault tolerance with real processes and real Redis: workers and the API killed,
watchers cut off, Redis stopped, poison work, graceful drain, bad input, load.

Every stack here is ``python -m dago serve|worker`` child processes (``ProcessStack``)
with a 1500 ms lease, so killing a worker costs about 1.5 s of waiting for its lease.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from dago.engine.ids import parse_shard
from dago.store.keys import WORK_GROUP
from dago.store.store import Store
from dago.v1 import execution_pb2, graph_pb2, orchestrator_pb2
from harness import (
    Client,
    ProcessStack,
    RunningStack,
    echo,
    edge,
    eventually,
    kinds,
    redis_store,
    request,
    start_api_quickly,
    tool,
)
from redisfixture import RedisServer, RedisTarget

# API and workers run as processes (python -m dago serve|worker).
pytestmark = pytest.mark.process

Event = execution_pb2.Event
COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
SHARDS = 4


def sleep(node_id: str, seconds: float, **fields: Any) -> dict[str, Any]:
    """A node running the built-in sleep tool."""
    return tool(node_id, "sleep", inputs={"seconds": seconds}, **fields)


def of(events: list[Event], kind: str, node: str | None = None) -> list[Event]:
    """The events of one payload kind (of one node when given)."""
    return [
        e for e in events if e.WhichOneof("payload") == kind and (node is None or e.node_id == node)
    ]


async def history_until(
    client: Client, gid: str, cond: Callable[[list[Event]], bool], timeout: float = 10.0
) -> list[Event]:
    """Poll ListGraphEvents until ``cond`` holds on the stored log; returns that log."""
    seen: list[Event] = []

    async def check() -> bool:
        nonlocal seen
        seen = await client.history(gid)
        return cond(seen)

    try:
        await eventually(check, timeout, 0.02)
    except AssertionError:
        raise AssertionError(f"events of {gid} never matched; last seen: {kinds(seen)}") from None
    return seen


def at_least(n: int, kind: str | None = None) -> Callable[[list[Event]], bool]:
    """A condition on a stored log: at least ``n`` events (of ``kind`` when given)."""
    return lambda evs: len(evs if kind is None else of(evs, kind)) >= n


def node_status(st: execution_pb2.GraphStatus, node: str) -> execution_pb2.NodeStatus:
    """One node's status."""
    return next(n for n in st.nodes if n.node_id == node)


def shard_of(gid: str) -> int:
    """The shard a graph id names."""
    shard = parse_shard(gid, SHARDS)
    assert shard is not None, gid
    return shard


async def pending(store: Store, gid: str, consumer: str | None = None) -> int:
    """Work items of ``gid``'s shard delivered and not acked (of one consumer when given)."""
    key = store.keys.shard(shard_of(gid)).work
    if consumer is None:
        info = await store.redis.xpending(key, WORK_GROUP)
        return int(info["pending"])
    rows = await store.redis.xpending_range(
        key, WORK_GROUP, min="-", max="+", count=1000, consumername=consumer
    )
    return len(rows)


async def start_worker(stack: ProcessStack, name: str) -> None:
    """Start a worker and wait until it announced itself in Redis (its heartbeat)."""
    stack.start(name, "worker")
    store = redis_store(stack.env["DAGO_REDIS_URL"], stack.env["DAGO_KEY_PREFIX"])
    try:

        async def registered() -> bool:
            return bool(await store.redis.hexists(store.keys.workers, name))

        # Generous: on a loaded 2-core machine four Python processes starting at once
        # have taken over 15 s; the wait only costs time when something is wrong.
        await eventually(registered, 45, 0.05)
    finally:
        await store.redis.aclose()


# --- 1. a worker killed mid-node -----------------------------------------------------------


async def test_killed_worker_node_is_reclaimed_once(
    redis_target: RedisTarget, key_prefix: str
) -> None:
    req = request(
        [sleep("s", 2), echo("after", slept="{{ nodes.s.output.slept }}")], [edge("s", "after")]
    )
    async with RunningStack(redis_target.url, key_prefix) as stack:
        # Three workers: after one is killed, one survivor reclaims the item and the other
        # must not steal it while it runs (2 s, longer than the lease: renewals keep it).
        await asyncio.gather(
            start_api_quickly(stack), *(start_worker(stack, f"w{n}") for n in (1, 2, 3))
        )
        gid = await stack.client.submit(req)
        events = await history_until(stack.client, gid, lambda evs: bool(of(evs, "node_started")))
        victim = of(events, "node_started", "s")[0].node_started.worker_id
        assert victim in {"w1", "w2", "w3"}
        stack.signal(victim, signal.SIGKILL)

        st = await stack.client.wait(gid, timeout=12)
        assert st.state == COMPLETED, st
        events = await stack.client.history(gid)
        started = of(events, "node_started", "s")
        assert len(started) == 2, kinds(events, "s")
        first, second = started
        assert (first.node_started.worker_id, first.node_started.redelivered) == (victim, False)
        rescuer = second.node_started.worker_id
        assert rescuer not in {"", victim}
        assert second.node_started.redelivered
        assert second.attempt == first.attempt == 1  # the same attempt, taken over
        lease_s = (second.time.ToMilliseconds() - first.time.ToMilliseconds()) / 1000
        assert lease_s >= 1.45, f"reclaimed {lease_s:.2f}s after delivery, before the lease"
        assert len(of(events, "node_completed", "s")) == 1, kinds(events, "s")
        assert len(of(events, "graph_completed")) == 1
        assert kinds(events)[-1] == "graph_completed"

        s = node_status(st, "s")
        assert s.state == execution_pb2.NODE_STATE_COMPLETED
        assert s.attempt == 1
        # One attempt, run twice: each execution has its own record and times.
        assert [(a.attempt, a.execution, a.state, a.worker_id) for a in s.attempts] == [
            (1, 1, execution_pb2.NODE_STATE_RECLAIMED, victim),
            (1, 2, execution_pb2.NODE_STATE_COMPLETED, rescuer),
        ]
        assert [a.start_time for a in s.attempts] == [first.time, second.time]
        assert json_format.MessageToDict(node_status(st, "after").output) == {"slept": 2}


# --- 2. the API killed and restarted -------------------------------------------------------


async def test_api_killed_and_restarted_graph_completes(
    redis_target: RedisTarget, key_prefix: str
) -> None:
    req = request(
        [sleep("s", 1.5), echo("after", slept="{{ nodes.s.output.slept }}")],
        [edge("s", "after")],
    )
    store = redis_store(redis_target.url, key_prefix)
    async with RunningStack(redis_target.url, key_prefix) as stack:
        try:
            stack.start("w1", "worker")
            await start_api_quickly(stack)
            gid = await stack.client.submit(req)
            await history_until(stack.client, gid, lambda evs: bool(of(evs, "node_started")))
            stack.signal("api", signal.SIGKILL)

            # With no API at all, the worker finishes the graph: state lives in Redis.
            async def completed_in_redis() -> bool:
                (state,) = await store.graph_fields(shard_of(gid), gid, "state")
                return state is not None and int(state) == COMPLETED

            await eventually(completed_in_redis, 15, 0.05)

            # A new channel: the old one backs off after losing the server.
            await stack.client.close()
            stack.client = Client(f"127.0.0.1:{stack.port}")
            await start_api_quickly(stack)
            st = await stack.client.wait(gid, timeout=10)
            assert st.state == COMPLETED
            result = await stack.client.result(gid)
            assert json_format.MessageToDict(result.output) == {"after": {"slept": 1.5}}
            events = await stack.client.watch(gid)
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            assert kinds(events)[-1] == "graph_completed"
            assert kinds(events).count("node_completed") == 2
            # The restarted API serves new work too.
            gid2, st2 = await stack.client.run(request([echo("e", x=1)]), timeout=10)
            assert st2.state == COMPLETED, gid2
        finally:
            await store.redis.aclose()


# --- 3. a watcher cut off and resumed ------------------------------------------------------


async def test_watch_resumes_after_disconnect_without_loss_or_duplicates(
    redis_target: RedisTarget, key_prefix: str
) -> None:
    chain = ["a", "b", "c", "d"]
    nodes = [sleep(n, 0.25) for n in chain] + [echo("z", done=True)]
    edges = [edge(x, y) for x, y in zip([*chain], [*chain[1:], "z"], strict=True)]
    async with RunningStack(redis_target.url, key_prefix) as stack:
        stack.start("w1", "worker")
        await start_api_quickly(stack)
        gid = await stack.client.submit(request(nodes, edges))

        received: list[Event] = []
        for take in (3, 4):
            call = stack.client.stub.WatchGraph(
                orchestrator_pb2.WatchGraphRequest(
                    graph_id=gid, after_seq=received[-1].seq if received else 0
                ),
                timeout=30,
            )
            got = 0
            async for msg in call:
                if msg.event.WhichOneof("payload") == "heartbeat":
                    continue
                received.append(msg.event)
                got += 1
                if got == take:
                    break
            call.cancel()  # the client goes away mid-stream
            # Let events happen while nobody watches, so the resume must replay them.
            last = received[-1].seq
            await history_until(stack.client, gid, at_least(last + 2))

        call = stack.client.stub.WatchGraph(
            orchestrator_pb2.WatchGraphRequest(graph_id=gid, after_seq=received[-1].seq),
            timeout=30,
        )
        async for msg in call:
            if msg.event.WhichOneof("payload") != "heartbeat":
                received.append(msg.event)

        stored = await stack.client.history(gid)
        assert kinds(stored)[-1] == "graph_completed"
        assert [e.seq for e in received] == [e.seq for e in stored]
        assert [e.seq for e in stored] == list(range(1, len(stored) + 1))
        assert kinds(received) == kinds(stored)
        assert [e.node_id for e in received] == [e.node_id for e in stored]
        assert received == stored


# --- 4. cancel stops a running node quickly ------------------------------------------------


async def test_cancel_stops_a_running_30s_sleep_at_once(
    redis_single: RedisServer, key_prefix: str
) -> None:
    req = request([sleep("s", 30), echo("after", x=1)], [edge("s", "after")])
    store = redis_store(redis_single.url, key_prefix)
    async with RunningStack(redis_single.url, key_prefix) as stack:
        try:
            stack.start("w1", "worker")
            await start_api_quickly(stack)
            gid = await stack.client.submit(req)
            await history_until(stack.client, gid, lambda evs: bool(of(evs, "node_started")))
            assert await pending(store, gid) == 1

            resp = await stack.client.stub.CancelGraph(
                orchestrator_pb2.CancelGraphRequest(graph_id=gid, reason="test says stop"),
                timeout=5,
            )
            t0 = time.monotonic()
            assert resp.state == execution_pb2.GRAPH_STATE_CANCELLED

            # The worker's task stops (it logs so) and the work item is acked.
            async def stopped() -> bool:
                logged = f"stopping {gid}/s" in stack.log("w1")
                return logged and await pending(store, gid) == 0

            await eventually(stopped, 5, 0.01)
            # Typically ~0.1 s; the bound only tells "stopped by the cancel" from "ran on"
            # (its 30 s sleep) with room for a loaded 2-core machine (1 s failed once there).
            elapsed = time.monotonic() - t0
            assert elapsed < 3.0, f"the running node stopped {elapsed:.2f}s after CancelGraph"

            st = await stack.client.status(gid)
            assert st.state == execution_pb2.GRAPH_STATE_CANCELLED
            assert node_status(st, "s").state == execution_pb2.NODE_STATE_CANCELLED
            assert node_status(st, "after").state == execution_pb2.NODE_STATE_SKIPPED
            events = await stack.client.history(gid)
            assert kinds(events, "s") == ["node_started", "node_cancelled"]
            assert kinds(events)[-1] == "graph_cancelled"
            assert events[-1].graph_cancelled.reason == "test says stop"
            # Its slot is free again: the same worker runs the next graph.
            gid2, st2 = await stack.client.run(request([echo("e", x=1)]), timeout=10)
            assert st2.state == COMPLETED, gid2
        finally:
            await store.redis.aclose()


# --- 5. many graphs at once ----------------------------------------------------------------


def diamond(topic: str) -> orchestrator_pb2.SubmitGraphRequest:
    """The diamond example as a request, with its own topic."""
    return request(
        [
            echo("start", topic="{{ inputs.topic }}"),
            echo("left", side="left", topic="{{ nodes.start.output.topic }}"),
            echo("right", side="right", topic="{{ nodes.start.output.topic }}"),
            echo(
                "join",
                sides="{{ [nodes.left.output.side, nodes.right.output.side] }}",
                summary="{{ nodes.left.output.topic }}: joined",
            ),
        ],
        [
            edge("start", "left"),
            edge("start", "right"),
            edge("left", "join"),
            edge("right", "join"),
        ],
        inputs={"topic": topic},
        name="diamond",
    )


async def test_200_concurrent_graphs_complete_exactly_once(
    redis_single: RedisServer, key_prefix: str
) -> None:
    n = 200
    async with RunningStack(redis_single.url, key_prefix) as stack:
        stack.start("w1", "worker")
        stack.start("w2", "worker")
        await start_api_quickly(stack)
        stub = stack.client.stub
        gids = list(
            await asyncio.gather(*(stack.client.submit(diamond(f"t{i}")) for i in range(n)))
        )
        assert len(set(gids)) == n

        async def count(state: execution_pb2.GraphState.ValueType) -> int:
            resp = await stub.ListGraphs(
                orchestrator_pb2.ListGraphsRequest(page_size=1000, state=state), timeout=10
            )
            return len(resp.graphs)

        async def all_done() -> bool:
            return await count(COMPLETED) == n

        await eventually(all_done, 60, 0.1)
        for other in (
            execution_pb2.GRAPH_STATE_SUBMITTED,
            execution_pb2.GRAPH_STATE_RUNNING,
            execution_pb2.GRAPH_STATE_FAILED,
        ):
            assert await count(other) == 0

        histories = await asyncio.gather(*(stack.client.history(g) for g in gids))
        results = await asyncio.gather(*(stack.client.result(g) for g in gids))
        workers: set[str] = set()
        for i, (gid, events, result) in enumerate(zip(gids, histories, results, strict=True)):
            k = kinds(events)
            assert k.count("graph_completed") == 1, (gid, k)
            assert k[-1] == "graph_completed", (gid, k)
            for node in ("start", "left", "right", "join"):
                assert kinds(events, node) == ["node_started", "node_completed"], (gid, node, k)
            workers |= {e.node_started.worker_id for e in of(events, "node_started")}
            assert [e.seq for e in events] == list(range(1, len(events) + 1)), gid
            assert json_format.MessageToDict(result.output) == {
                "join": {"sides": ["left", "right"], "summary": f"t{i}: joined"}
            }
        assert workers == {"w1", "w2"}, "both worker processes should have taken work"


# --- 6. bad graphs -------------------------------------------------------------------------

BAD_GRAPHS: list[tuple[str, orchestrator_pb2.SubmitGraphRequest, str, str]] = [
    # (case, request, field of a violation, word its description contains)
    (
        "unknown node in edge",
        request([echo("a"), echo("b")], [edge("a", "b"), edge("a", "ghost")]),
        "graph.edges[1].to",
        "ghost",
    ),
    (
        "duplicate node ids",
        request([echo("a"), echo("a")]),
        "graph.nodes[1].id",
        "duplicate",
    ),
    (
        "unreachable node",
        request([echo("a"), echo("b")], entry_nodes=["a"]),
        "graph.nodes[1].id",
        "reachable",
    ),
    (
        "unbounded cycle",
        request(
            [echo("s"), echo("a"), echo("b")], [edge("s", "a"), edge("a", "b"), edge("b", "a")]
        ),
        "graph.nodes[1].max_iterations",
        "cycle",
    ),
    (
        "CEL that does not compile",
        request([echo("a"), echo("b")], [edge("a", "b", condition="nodes.a.output.x +")]),
        "graph.edges[0].condition",
        "",
    ),
    (
        "template naming a missing input",
        request([echo("a", x="{{ inputs.nope }}")], inputs={"topic": "t"}),
        "graph.nodes[0].inputs.x",
        "nope",
    ),
    (
        "template naming a node that is not upstream",
        request([echo("a"), echo("b", x="{{ nodes.a.output }}")]),
        "graph.nodes[1].inputs.x",
        "does not run before",
    ),
    (
        "unknown tool",
        request([tool("a", "no_such_tool")]),
        "graph.nodes[0].tool.name",
        "no_such_tool",
    ),
]


async def test_bad_graphs_get_field_violations_and_server_keeps_serving(
    redis_single: RedisServer, key_prefix: str
) -> None:
    async with RunningStack(redis_single.url, key_prefix) as stack:
        stack.start("w1", "worker")
        await start_api_quickly(stack)
        problems = []
        for case, req, field, word in BAD_GRAPHS:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stack.client.stub.SubmitGraph(req, timeout=10)
            err = info.value
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (case, err)
            status = rpc_status.from_call(err)  # type: ignore[arg-type]
            assert status is not None, (case, "no google.rpc.Status in the trailers")
            bad = error_details_pb2.BadRequest()
            assert any(d.Unpack(bad) for d in status.details), (case, status)
            found = [(v.field, v.description) for v in bad.field_violations]
            if not any(f == field and word in d for f, d in found):
                problems.append(f"{case}: want {field} ~ {word!r}, got {found}")
            # The server keeps serving between bad requests: a good graph completes.
            gid, st = await stack.client.run(diamond(case), timeout=10)
            assert st.state == COMPLETED, (case, gid)
        assert not problems, "\n".join(problems)
        assert stack.procs["api"].poll() is None, "the API process died"


# --- 7. health follows Redis ---------------------------------------------------------------


async def test_health_follows_redis_and_service_recovers(
    private_redis: RedisServer, key_prefix: str
) -> None:
    async with RunningStack(private_redis.url, key_prefix) as stack:
        health = health_pb2_grpc.HealthStub(stack.client.channel)
        service = "dago.v1.OrchestratorService"

        async def status(name: str = "") -> int:
            req = health_pb2.HealthCheckRequest(service=name)
            r = await health.Check(req, timeout=2)  # type: ignore[attr-defined]
            return int(r.status)

        stack.start("w1", "worker")
        await start_api_quickly(stack)
        assert await status() == health_pb2.HealthCheckResponse.SERVING
        # Some traffic first, so the API holds several pooled Redis connections.
        before = await asyncio.gather(*(stack.client.run(diamond(f"b{i}")) for i in range(8)))
        assert all(st.state == COMPLETED for _, st in before)
        assert await status(service) == health_pb2.HealthCheckResponse.SERVING

        private_redis.stop()
        t0 = time.monotonic()

        async def not_serving() -> bool:
            return await status() == health_pb2.HealthCheckResponse.NOT_SERVING

        await eventually(not_serving, 5, 0.05)
        assert time.monotonic() - t0 < 5
        assert await status(service) == health_pb2.HealthCheckResponse.NOT_SERVING

        private_redis.start()

        async def serving() -> bool:
            return await status() == health_pb2.HealthCheckResponse.SERVING

        await eventually(serving, 10, 0.05)
        assert await status(service) == health_pb2.HealthCheckResponse.SERVING
        # Once SERVING again, requests succeed: the API and the worker reconnect by
        # themselves (the Redis came back empty: its groups are recreated).
        after = await asyncio.gather(
            *(stack.client.run(diamond(f"a{i}"), timeout=20) for i in range(8))
        )
        assert all(st.state == COMPLETED for _, st in after), after
        assert all(p.poll() is None for p in stack.procs.values()), "a process exited"


# --- 8. poison work is dead-lettered -------------------------------------------------------


async def test_poison_work_is_dead_lettered(redis_target: RedisTarget, key_prefix: str) -> None:
    # Each delivery up to max_deliveries runs and its worker is killed mid-sleep; the next
    # delivery (by XAUTOCLAIM after the lease) exceeds it and is dead-lettered, not run.
    # (Redelivery within the limit is covered by test_killed_worker_node_is_reclaimed_once.)
    max_deliveries = 1
    store = redis_store(redis_target.url, key_prefix)
    async with RunningStack(
        redis_target.url, key_prefix, DAGO_MAX_DELIVERIES=str(max_deliveries)
    ) as stack:
        try:
            spares = iter(f"w{n}" for n in range(1, 10))
            await asyncio.gather(
                start_api_quickly(stack), *(start_worker(stack, next(spares)) for _ in range(2))
            )
            gid = await stack.client.submit(
                request([sleep("s", 5), echo("after", x=1)], [edge("s", "after")])
            )
            for delivery in range(1, max_deliveries + 1):
                events = await history_until(stack.client, gid, at_least(delivery, "node_started"))
                ev = of(events, "node_started", "s")[delivery - 1]
                assert ev.node_started.redelivered == (delivery > 1)
                stack.signal(ev.node_started.worker_id, signal.SIGKILL)
                await start_worker(stack, next(spares))  # always one spare left

            # The node waits in the dead-letter list (the graph keeps running) until an
            # operator requeues or drops it (tests/api/test_deadletters.py); dropping fails it.
            async def dead_lettered() -> bool:
                st = await stack.client.status(gid)
                return node_status(st, "s").state == execution_pb2.NODE_STATE_DEAD_LETTERED

            await eventually(dead_lettered, 10, 0.05)
            dead_key = store.keys.shard(shard_of(gid)).dead
            assert dead_key == f"{key_prefix}:{{s{shard_of(gid)}}}:dead"
            dead = await store.redis.xrange(dead_key)
            assert len(dead) == 1, dead
            fields = {k.decode(): v.decode() for k, v in dead[0][1].items()}
            assert (fields["g"], fields["n"], fields["a"]) == (gid, "s", "1")
            assert int(fields["deliveries"]) == max_deliveries + 1
            assert await pending(store, gid) == 0, "the dead-lettered item is still pending"
            listed = await stack.client.stub.ListDeadLetters(
                orchestrator_pb2.ListDeadLettersRequest(graph_id=gid)
            )
            (letter,) = listed.dead_letters
            await stack.client.stub.DropDeadLetter(
                orchestrator_pb2.DropDeadLetterRequest(dead_letter_id=letter.dead_letter_id)
            )

            st = await stack.client.wait(gid, timeout=10)
            assert st.state == execution_pb2.GRAPH_STATE_FAILED
            s = node_status(st, "s")
            assert s.state == execution_pb2.NODE_STATE_FAILED
            assert s.error.error_class == graph_pb2.ERROR_CLASS_DEAD_LETTER, s.error
            assert st.error.error_class == graph_pb2.ERROR_CLASS_DEAD_LETTER, st.error
            assert node_status(st, "after").state == execution_pb2.NODE_STATE_SKIPPED

            events = await stack.client.history(gid)
            assert kinds(events, "s") == ["node_started"] * max_deliveries + [
                "node_dead_lettered",
                "node_failed",
            ]
            failed = of(events, "node_failed", "s")[0].node_failed.error
            assert failed.error_class == graph_pb2.ERROR_CLASS_DEAD_LETTER
            assert kinds(events)[-1] == "graph_failed"
            assert events[-1].graph_failed.failed_node_id == "s"
            assert await store.redis.xrange(dead_key) == [], "a dropped dead letter remains"
        finally:
            await store.redis.aclose()


# --- 9. graceful drain --------------------------------------------------------------------


async def test_sigterm_drains_running_attempt_and_takes_no_new_work(
    redis_single: RedisServer, key_prefix: str
) -> None:
    req = request(
        [sleep("s", 1), echo("after", slept="{{ nodes.s.output.slept }}")], [edge("s", "after")]
    )
    store = redis_store(redis_single.url, key_prefix)
    async with RunningStack(redis_single.url, key_prefix) as stack:
        try:
            w1 = stack.start("w1", "worker")
            await start_api_quickly(stack)
            gid = await stack.client.submit(req)
            await history_until(stack.client, gid, lambda evs: bool(of(evs, "node_started")))
            w1.send_signal(signal.SIGTERM)

            async def exited() -> bool:
                return w1.poll() is not None

            try:
                await eventually(exited, 8, 0.02)
            finally:
                if w1.poll() is None:  # hung: fail now rather than at close()
                    w1.kill()
            assert w1.returncode == 0, f"w1 exited with {w1.returncode}"

            st = await stack.client.status(gid)
            s = node_status(st, "s")
            assert s.state == execution_pb2.NODE_STATE_COMPLETED, s
            assert [(a.state, a.worker_id) for a in s.attempts] == [
                (execution_pb2.NODE_STATE_COMPLETED, "w1")
            ]
            # "after" became ready while w1 drained; w1 must not have taken it.
            assert node_status(st, "after").state == execution_pb2.NODE_STATE_QUEUED, st
            assert await pending(store, gid, "w1") == 0
            assert "after" not in {
                e.node_id for e in of(await stack.client.history(gid), "node_started")
            }

            stack.start("w2", "worker")
            st = await stack.client.wait(gid, timeout=10)
            assert st.state == COMPLETED
            after = node_status(st, "after")
            assert [a.worker_id for a in after.attempts] == ["w2"]
            events = await stack.client.history(gid)
            assert kinds(events, "s") == ["node_started", "node_completed"]
        finally:
            await store.redis.aclose()
