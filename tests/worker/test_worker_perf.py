"""The worker's fast paths keep the semantics of the general one.

Tools with an ``inline`` form run without a task of their own (their async form must not
be called); their results, failures, retries and bugs are reported as an awaited tool's
are. Attempts running in tasks time out through one timer per worker: each at its own
deadline, none early, with the usual timeout failure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import pytest

from dago.app import build_worker
from dago.nodes.base import NodeContext, NodeFailure, Tool
from dago.observe.logs import NODE
from dago.store.keys import WORK_GROUP
from dago.v1 import execution_pb2, graph_pb2
from harness import (
    InProcessStack,
    MakeStack,
    edge,
    eventually,
    node_status,
    of_kind,
    plain,
    request,
    stack_settings,
    tool,
)
from redisfixture import RedisTarget

G = execution_pb2
COMPLETED, FAILED = G.GRAPH_STATE_COMPLETED, G.GRAPH_STATE_FAILED

SEEN: list[tuple[str, str, int]] = []
"""(graph id, node id, attempt) of the NODE log fields each inline call ran with."""


async def _not_awaited(args: Any, ctx: NodeContext) -> Any:
    raise AssertionError("the worker awaited a tool that has an inline form")


def _double(args: Any, ctx: NodeContext) -> Any:
    fields = NODE.get()
    assert fields is not None
    SEEN.append((fields.graph_id, fields.node_id, fields.attempt))
    return {"n": int(args["n"]) * 2}


def _flaky_now(args: Any, ctx: NodeContext) -> Any:
    if ctx.attempt < 2:
        raise NodeFailure(graph_pb2.ERROR_CLASS_TRANSIENT, f"attempt {ctx.attempt} fails", True)
    return {"attempt": ctx.attempt}


def _bug_now(args: Any, ctx: NodeContext) -> Any:
    raise RuntimeError("inline bug")


def dago_tools() -> list[Tool]:
    """Loaded by the stack below (DAGO_TOOL_MODULES)."""
    return [
        Tool("double", "Doubles n, inline.", _not_awaited, inline=_double),
        Tool("flaky_now", "Fails its first attempt, inline.", _not_awaited, inline=_flaky_now),
        Tool("bug_now", "Raises, inline.", _not_awaited, inline=_bug_now),
    ]


@pytest.fixture
async def stack(redis_target: RedisTarget, make_stack: MakeStack) -> InProcessStack:
    return await make_stack(redis_target, tool_modules="testtools,test_worker_perf")


async def test_inline_tools_report_results_retries_and_bugs(stack: InProcessStack) -> None:
    SEEN.clear()
    nodes = [
        tool("a", "double", inputs={"n": 3}),
        tool("b", "double", inputs={"n": "{{ nodes.a.output.n }}"}),
        tool("skipped", "double", inputs={"n": 1}),
        tool("f", "flaky_now", retry={"max_attempts": 2, "initial_backoff": "0.01s"}),
    ]
    edges = [
        edge("a", "b", condition="nodes.a.output.n == 6"),
        edge("a", "skipped", condition="nodes.a.output.n == 7"),
    ]
    gid, st = await stack.client.run(request(nodes, edges))
    assert st.state == COMPLETED, st
    assert plain(node_status(st, "b").output) == {"n": 12}
    assert node_status(st, "skipped").state == G.NODE_STATE_SKIPPED
    f = node_status(st, "f")
    assert plain(f.output) == {"attempt": 2}
    assert [a.error.message for a in f.attempts] == ["attempt 1 fails", ""]
    # Each inline call ran with its own attempt's log fields.
    assert sorted(SEEN) == [(gid, "a", 1), (gid, "b", 1)]
    assert NODE.get() is None

    _, st = await stack.client.run(request([tool("x", "bug_now")]))
    assert st.state == FAILED
    err = node_status(st, "x").error
    assert err.error_class == graph_pb2.ERROR_CLASS_TRANSIENT
    assert err.message == "RuntimeError: inline bug"


async def test_attempts_time_out_each_at_its_own_deadline(
    stack: InProcessStack, caplog: pytest.LogCaptureFixture
) -> None:
    def sleeper(node_id: str, seconds: float, timeout: str) -> dict[str, Any]:
        return tool(node_id, "sleep", inputs={"seconds": seconds}, attemptTimeout=timeout)

    # One graph each (a failed node fails its graph), run at once by the stack's one worker.
    nodes = [
        sleeper("short", 30, "0.3s"),
        sleeper("long", 30, "1.2s"),
        sleeper("fits", 0.6, "5s"),
    ]
    caplog.set_level(logging.ERROR, "dago.worker")
    runs = await asyncio.gather(*(stack.client.run(request([n]), 30) for n in nodes))
    for (_, st), node_id, limit_ms in zip(runs[:2], ("short", "long"), (300, 1200), strict=True):
        assert st.state == FAILED
        (attempt,) = node_status(st, node_id).attempts
        assert attempt.error.error_class == graph_pb2.ERROR_CLASS_TIMEOUT
        assert attempt.error.message == (
            f"the attempt ran past its timeout of {limit_ms / 1000:g}s"
        )
        ran_ms = attempt.end_time.ToMilliseconds() - attempt.start_time.ToMilliseconds()
        assert limit_ms - 50 <= ran_ms < limit_ms + 2000
    st = runs[2][1]
    assert st.state == COMPLETED
    assert plain(node_status(st, "fits").output) == {"slept": 0.6}
    assert not [r for r in caplog.records if r.name == "dago.worker" and r.levelno >= logging.ERROR]


async def test_a_graph_with_several_edges_and_a_chain_of_inline_nodes(
    stack: InProcessStack,
) -> None:
    """Unconditional edges (taken without evaluating anything) fan out and join."""
    nodes = [tool("src", "double", inputs={"n": 1})]
    nodes += [tool(f"m{i}", "double", inputs={"n": "{{ nodes.src.output.n }}"}) for i in range(5)]
    total = " + ".join(f"nodes.m{i}.output.n" for i in range(5))
    nodes.append(tool("sink", "double", inputs={"n": "{{ " + total + " }}"}))
    edges = [edge("src", f"m{i}") for i in range(5)] + [edge(f"m{i}", "sink") for i in range(5)]
    _, st = await stack.client.run(request(nodes, edges))
    assert st.state == COMPLETED, st
    assert plain(node_status(st, "sink").output) == {"n": 40}


async def test_items_of_different_shards_with_the_same_stream_id_both_run(
    redis_target: RedisTarget, make_stack: MakeStack, caplog: pytest.LogCaptureFixture
) -> None:
    """Stream ids are unique within one shard only: items dispatched in the same
    millisecond to two shards carry the same id, and a worker runs and tracks both (each
    runs past the lease, so one it stopped renewing would be reclaimed and run twice)."""
    caplog.set_level(logging.ERROR, "dago.worker")
    per_round = 200
    # Slots for a whole round: the worker holds all of it at once (colliding items
    # included), in one pass of lease_s + 0.3 s instead of four of 64.
    stack = await make_stack(redis_target, worker_slots=per_round)
    store = stack.store
    shards = stack.settings.shards
    assert shards > 1
    for _ in range(5):
        lease_s = stack.settings.lease_ms / 1000
        reqs = [request([tool("s", "sleep", inputs={"seconds": lease_s + 0.3})])] * per_round
        gids = await asyncio.gather(*(stack.client.submit(r) for r in reqs))
        for gid in gids:
            assert (await stack.client.wait(gid, timeout=30)).state == COMPLETED
            assert len(of_kind(await stack.client.history(gid), "node_started")) == 1
        seen: dict[bytes, int] = {}
        for shard in range(shards):
            for mid, _ in await store.redis.xrange(store.keys.shard(shard).work):
                seen[mid] = seen.get(mid, 0) + 1
        if any(n > 1 for n in seen.values()):
            break
    else:
        pytest.fail(f"no two shards' work items shared an id in {5 * per_round} submissions")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_draining_worker_finishes_its_attempts_and_takes_no_new_work(
    redis_target: RedisTarget, key_prefix: str
) -> None:
    """On SIGTERM (its stop event) a worker lets its running attempt finish and applies the
    result, but takes none of the work that result dispatches: the next worker runs it."""
    settings = stack_settings(redis_target.url, key_prefix)
    async with InProcessStack(settings, workers=0) as stack:
        req = request(
            [tool("s", "sleep", inputs={"seconds": 0.8}), tool("after", "echo", inputs={"v": 1})],
            [edge("s", "after")],
        )
        stop = asyncio.Event()
        first = build_worker(dataclasses.replace(settings, worker_id="first"))
        run = asyncio.create_task(first.run(stop))
        gid = await stack.client.submit(req)

        async def running() -> bool:
            st = await stack.client.status(gid)
            return node_status(st, "s").state == G.NODE_STATE_RUNNING

        await eventually(running)
        stop.set()
        await asyncio.wait_for(run, 10)
        st = await stack.client.status(gid)
        assert node_status(st, "s").state == G.NODE_STATE_COMPLETED
        # Neither the apply of s's result nor a reader took "after" (on a single Redis and
        # on a cluster alike): it waits for another worker.
        assert node_status(st, "after").state == G.NODE_STATE_QUEUED
        pending = 0
        for shard in stack.store.keys.all_shards():
            info = await stack.store.redis.xpending(shard.work, WORK_GROUP)
            pending += info["pending"]
        assert pending == 0

        second_stop = asyncio.Event()
        second = build_worker(dataclasses.replace(settings, worker_id="second"))
        second_run = asyncio.create_task(second.run(second_stop))
        try:
            st = await asyncio.wait_for(stack.client.wait(gid), 20)
            assert st.state == COMPLETED
            (attempt,) = node_status(st, "after").attempts
            assert attempt.worker_id == "second"
        finally:
            second_stop.set()
            await asyncio.wait_for(second_run, 10)
