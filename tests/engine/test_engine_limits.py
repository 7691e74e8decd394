"""Execution semantics, part 2: failures, limits and the run's lifecycle.

Retries, per-attempt timeouts, graph deadlines and step limits, cancellation,
idempotent submission, results, retention, listing and the event log /
WatchGraph, each through the real stack on a single Redis and on a cluster.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2

from dago.engine.ids import new_graph_id, parse_shard
from dago.v1 import execution_pb2, graph_pb2, orchestrator_pb2
from harness import (
    InProcessStack,
    MakeStack,
    echo,
    edge,
    error_details,
    eventually,
    kinds,
    node_states,
    node_status,
    of_kind,
    plain,
    request,
    rpc_error,
    seq_of,
    stack_settings,
    tool,
    watch_raw,
)
from redisfixture import RedisTarget

G = execution_pb2
COMPLETED, FAILED, CANCELLED = (
    G.GRAPH_STATE_COMPLETED,
    G.GRAPH_STATE_FAILED,
    G.GRAPH_STATE_CANCELLED,
)
TRANSIENT = graph_pb2.ERROR_CLASS_TRANSIENT
RATE_LIMITED = graph_pb2.ERROR_CLASS_RATE_LIMITED


@pytest.fixture
async def stack(redis_target: RedisTarget, make_stack: MakeStack) -> InProcessStack:
    return await make_stack(redis_target)


def retry(max_attempts: int, backoff: str = "0.05s", **more: Any) -> dict[str, Any]:
    return {"max_attempts": max_attempts, "initial_backoff": backoff, **more}


def flaky(node_id: str, fail_attempts: int, policy: dict[str, Any] | None, **args: Any) -> Any:
    fields: dict[str, Any] = {"inputs": {"fail_attempts": fail_attempts, **args}}
    if policy is not None:
        fields["retry"] = policy
    return tool(node_id, "flaky", **fields)


def sleep(node_id: str, seconds: float, **fields: Any) -> dict[str, Any]:
    return tool(node_id, "sleep", inputs={"seconds": seconds}, **fields)


def cancel_req(gid: str) -> orchestrator_pb2.CancelGraphRequest:
    return orchestrator_pb2.CancelGraphRequest(graph_id=gid)


async def running(stack: InProcessStack, gid: str, node: str) -> None:
    async def check() -> bool:
        st = await stack.client.status(gid)
        return node_status(st, node).state == G.NODE_STATE_RUNNING

    await eventually(check)


async def pending_work(stack: InProcessStack, gid: str) -> int:
    """Work items of the graph's shard delivered to a worker and not acked yet."""
    shard = parse_shard(gid, stack.settings.shards)
    assert shard is not None
    info = await stack.store.redis.xpending(stack.store.keys.shard(shard).work, "workers")
    return int(info["pending"])


# --- retries -------------------------------------------------------------------------------


async def test_retry_until_success_keeps_every_attempt(stack: InProcessStack) -> None:
    gid, st = await stack.client.run(request([flaky("f", 2, retry(3), value="v")]))
    assert st.state == COMPLETED
    f = node_status(st, "f")
    assert f.state == G.NODE_STATE_COMPLETED
    assert f.attempt == 3
    assert plain(f.output) == {"attempt": 3, "value": "v"}
    assert [a.attempt for a in f.attempts] == [1, 2, 3]
    assert [a.state for a in f.attempts] == [
        G.NODE_STATE_FAILED,
        G.NODE_STATE_FAILED,
        G.NODE_STATE_COMPLETED,
    ]
    for a in f.attempts[:2]:
        assert a.error.error_class == TRANSIENT
        assert a.error.message == f"flaky: attempt {a.attempt} fails on purpose"
        assert a.error.retryable
        assert not a.HasField("output")
    assert plain(f.attempts[2].output) == {"attempt": 3, "value": "v"}
    assert not f.attempts[2].HasField("error")
    # The next attempt waited for its backoff.
    gap_ms = f.attempts[1].start_time.ToMilliseconds() - f.attempts[0].end_time.ToMilliseconds()
    assert gap_ms >= 50
    events = await stack.client.history(gid)
    retrying = of_kind(events, "node_retrying", "f")
    assert [(e.attempt, e.node_retrying.next_attempt) for e in retrying] == [(1, 2), (2, 3)]
    assert [e.node_retrying.backoff_ms for e in retrying] == [50, 100]
    assert all(e.node_retrying.error.error_class == TRANSIENT for e in retrying)
    assert [e.attempt for e in of_kind(events, "node_started", "f")] == [1, 2, 3]
    assert not of_kind(events, "node_failed")


async def test_retries_exhausted_fail_the_graph(stack: InProcessStack) -> None:
    gid, st = await stack.client.run(
        request([flaky("f", 5, retry(2)), echo("next")], [edge("f", "next")])
    )
    assert st.state == FAILED
    f = node_status(st, "f")
    assert f.state == G.NODE_STATE_FAILED
    assert len(f.attempts) == 2
    assert f.error.error_class == TRANSIENT
    assert node_status(st, "next").state == G.NODE_STATE_SKIPPED
    assert st.error.error_class == TRANSIENT
    assert "attempt 2" in st.error.message
    events = await stack.client.history(gid)
    assert len(of_kind(events, "node_retrying", "f")) == 1
    (failed,) = of_kind(events, "graph_failed")
    assert failed.graph_failed.failed_node_id == "f"
    assert failed.graph_failed.error.error_class == TRANSIENT
    assert seq_of(events, "node_failed", "f") < failed.seq
    assert kinds(events)[-1] == "graph_failed"


async def test_graph_default_retry_policy_applies(stack: InProcessStack) -> None:
    req = request([flaky("f", 2, None)], defaults={"retry": retry(3)})
    _, st = await stack.client.run(req)
    assert st.state == COMPLETED
    assert node_status(st, "f").attempt == 3


async def test_retry_on_limits_which_classes_retry(stack: InProcessStack) -> None:
    only_transient = retry(3, retry_on=["ERROR_CLASS_TRANSIENT"])
    gid, st = await stack.client.run(
        request([flaky("f", 1, only_transient, error_class=RATE_LIMITED)])
    )
    assert st.state == FAILED
    f = node_status(st, "f")
    assert len(f.attempts) == 1
    assert f.error.error_class == RATE_LIMITED
    assert not of_kind(await stack.client.history(gid), "node_retrying")

    rate_limited = retry(3, retry_on=["ERROR_CLASS_RATE_LIMITED"])
    _, st = await stack.client.run(request([flaky("f", 1, rate_limited, error_class=RATE_LIMITED)]))
    assert st.state == COMPLETED
    assert node_status(st, "f").attempt == 2


async def test_backoff_grows_with_the_multiplier(stack: InProcessStack) -> None:
    policy = retry(4, backoff_multiplier=3, max_backoff="0.2s", jitter=0)
    gid, st = await stack.client.run(request([flaky("f", 3, policy)]))
    assert st.state == COMPLETED
    backoffs = [
        e.node_retrying.backoff_ms
        for e in of_kind(await stack.client.history(gid), "node_retrying")
    ]
    assert backoffs == [50, 150, 200]  # x3 each time, capped by max_backoff


async def test_non_retryable_failure_is_not_retried(stack: InProcessStack) -> None:
    node = tool("f", "fail", inputs={"message": "no way"}, retry=retry(3))
    gid, st = await stack.client.run(request([node]))
    assert st.state == FAILED
    f = node_status(st, "f")
    assert len(f.attempts) == 1
    assert f.error.error_class == graph_pb2.ERROR_CLASS_PERMANENT
    assert f.error.message == "no way"
    assert not f.error.retryable
    events = await stack.client.history(gid)
    assert kinds(events, "f") == ["node_started", "node_failed"]


async def test_tool_crash_is_transient_and_retried(stack: InProcessStack) -> None:
    gid, st = await stack.client.run(request([tool("f", "crash", retry=retry(2))]))
    assert st.state == FAILED
    f = node_status(st, "f")
    assert len(f.attempts) == 2
    for a in f.attempts:
        assert a.error.error_class == TRANSIENT
        assert a.error.retryable
        assert a.error.message == "RuntimeError: tool bug"
    assert len(of_kind(await stack.client.history(gid), "node_retrying", "f")) == 1


# --- timeouts and limits -------------------------------------------------------------------


async def test_attempt_timeout_fails_the_attempt_and_retries(stack: InProcessStack) -> None:
    node = sleep("s", 5, attempt_timeout="0.3s", retry=retry(2))
    started = time.monotonic()
    gid, st = await stack.client.run(request([node]))
    assert time.monotonic() - started < 3
    assert st.state == FAILED
    s = node_status(st, "s")
    assert [a.error.error_class for a in s.attempts] == [graph_pb2.ERROR_CLASS_TIMEOUT] * 2
    assert all("timeout" in a.error.message for a in s.attempts)
    for a in s.attempts:
        ran_ms = a.end_time.ToMilliseconds() - a.start_time.ToMilliseconds()
        assert 250 <= ran_ms < 2000
    (retrying,) = of_kind(await stack.client.history(gid), "node_retrying", "s")
    assert retrying.node_retrying.error.error_class == graph_pb2.ERROR_CLASS_TIMEOUT


async def test_hung_attempt_is_failed_by_the_redis_held_deadline(stack: InProcessStack) -> None:
    """A tool that ignores its worker's timeout: the worker keeps renewing the lease, so
    only the attempt's deadline, put on the shard's timers by the lease renewal, ends it."""
    sk = stack.store.keys
    # The Redis-held deadline fails it in about 2 s here. The tool runs on for 5 s (well past
    # that), and stopping the stack waits for it, as it ignores cancellation.
    node = tool("s", "stubborn", inputs={"seconds": 5}, attempt_timeout="0.3s")
    gid = await stack.client.submit(request([node]))
    shard = parse_shard(gid, stack.settings.shards)
    assert shard is not None
    timers = sk.shard(shard).timers

    async def timer_set() -> bool:
        members = await stack.store.redis.zrange(timers, 0, -1)
        return any(m.decode().startswith(f"t|{gid}|s|") for m in members)

    await eventually(timer_set, timeout=5)
    st = await stack.client.wait(gid, timeout=10)
    assert st.state == FAILED
    (attempt,) = node_status(st, "s").attempts
    assert attempt.error.error_class == graph_pb2.ERROR_CLASS_TIMEOUT
    assert "did not report" in attempt.error.message
    assert not await timer_set()


async def test_fast_attempts_leave_no_timers(stack: InProcessStack) -> None:
    """Attempts that finish before their lease is renewed never touch the timers."""
    gid, st = await stack.client.run(request([echo("a", v=1), echo("b", v=2)], [edge("a", "b")]))
    assert st.state == COMPLETED
    for s in range(stack.settings.shards):
        members = await stack.store.redis.zrange(stack.store.keys.shard(s).timers, 0, -1)
        # Only the finished graph's expiry ('x|...') may be there, no attempt timer ('t|...').
        assert not [m for m in members if m.startswith(b"t|")]
        if s == parse_shard(gid, stack.settings.shards):
            assert [m for m in members if m.startswith(b"x|")]


async def test_graph_deadline_fails_the_graph(stack: InProcessStack) -> None:
    req = request(
        [sleep("slow", 30), echo("after")], [edge("slow", "after")], limits={"deadline": "0.5s"}
    )
    started = time.monotonic()
    gid = await stack.client.submit(req)
    st = await stack.client.wait(gid, timeout=5)
    assert 0.4 < time.monotonic() - started < 3
    assert st.state == FAILED
    assert st.error.error_class == graph_pb2.ERROR_CLASS_LIMIT
    assert "deadline" in st.error.message
    assert node_states(st) == {"slow": "CANCELLED", "after": "SKIPPED"}
    events = await stack.client.history(gid)
    (cancelled,) = of_kind(events, "node_cancelled", "slow")
    assert cancelled.node_cancelled.reason == "graph failed"
    (skipped,) = of_kind(events, "node_skipped", "after")
    assert skipped.node_skipped.reason == "graph failed"
    (failed,) = of_kind(events, "graph_failed")
    assert failed.graph_failed.error.error_class == graph_pb2.ERROR_CLASS_LIMIT
    assert kinds(events)[-1] == "graph_failed"

    # The worker stopped the 30 s sleep instead of finishing it.
    async def stopped() -> bool:
        return await pending_work(stack, gid) == 0

    await eventually(stopped, timeout=2)


async def test_max_steps_fails_the_graph(stack: InProcessStack) -> None:
    req = request(
        [echo("a"), echo("b"), echo("c")],
        [edge("a", "b"), edge("b", "c")],
        limits={"max_steps": 2},
    )
    gid, st = await stack.client.run(req)
    assert st.state == FAILED
    assert st.error.error_class == graph_pb2.ERROR_CLASS_LIMIT
    assert "max_steps" in st.error.message
    states = node_states(st)
    assert states["a"] == states["b"] == "COMPLETED"
    assert states["c"] == "CANCELLED"
    events = await stack.client.history(gid)
    assert "node_started" not in kinds(events, "c")
    # Two node attempts started; the third was refused.
    assert st.steps == 2


# --- cancel --------------------------------------------------------------------------------


async def test_cancel_stops_running_and_skips_pending_nodes(stack: InProcessStack) -> None:
    gid = await stack.client.submit(
        request([sleep("slow", 30), echo("after")], [edge("slow", "after")])
    )
    await running(stack, gid, "slow")
    started = time.monotonic()
    resp = await stack.client.stub.CancelGraph(
        orchestrator_pb2.CancelGraphRequest(graph_id=gid, reason="user pressed stop")
    )
    assert resp.state == CANCELLED
    st = await stack.client.status(gid)
    assert st.state == CANCELLED
    assert node_states(st) == {"slow": "CANCELLED", "after": "SKIPPED"}
    assert "user pressed stop" in st.error.message

    # The running attempt is really stopped: its work item is acked within a second.
    async def stopped() -> bool:
        return await pending_work(stack, gid) == 0

    await eventually(stopped, timeout=1)
    assert time.monotonic() - started < 1

    events = await stack.client.history(gid)
    (cancelled,) = of_kind(events, "graph_cancelled")
    assert cancelled.graph_cancelled.reason == "user pressed stop"
    assert kinds(events)[-1] == "graph_cancelled"
    (node_cancelled,) = of_kind(events, "node_cancelled", "slow")
    assert node_cancelled.node_cancelled.reason == "graph cancelled"
    (skipped,) = of_kind(events, "node_skipped", "after")
    assert skipped.node_skipped.reason == "graph cancelled"
    assert not of_kind(events, "node_completed")

    # Cancelling a cancelled graph succeeds again (a client may retry) and changes nothing.
    again = await stack.client.stub.CancelGraph(cancel_req(gid))
    assert again.state == CANCELLED
    assert await stack.client.history(gid) == events


async def test_cancel_finished_or_unknown_graph(stack: InProcessStack) -> None:
    gid, st = await stack.client.run(request([echo("a")]))
    assert st.state == COMPLETED
    err = await rpc_error(stack.client.stub.CancelGraph(cancel_req(gid)))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "COMPLETED" in (err.details() or "")
    (pf,) = error_details(err)
    assert isinstance(pf, error_details_pb2.PreconditionFailure)
    assert pf.violations[0].subject == gid
    assert (await stack.client.status(gid)).state == COMPLETED
    for unknown in (new_graph_id(1), "no-such-graph"):
        err = await rpc_error(stack.client.stub.CancelGraph(cancel_req(unknown)))
        assert err.code() == grpc.StatusCode.NOT_FOUND, unknown


# --- idempotent submit ---------------------------------------------------------------------


async def test_same_request_id_returns_the_same_graph(stack: InProcessStack) -> None:
    req = request([echo("a", v=1)], request_id="order-42")
    first = await stack.client.stub.SubmitGraph(req)
    assert first.created
    await stack.client.wait(first.graph_id)
    second = await stack.client.stub.SubmitGraph(req)
    assert second.graph_id == first.graph_id
    assert not second.created
    assert second.state == COMPLETED
    st = await stack.client.status(first.graph_id)
    assert st.request_id == "order-42"
    events = await stack.client.history(first.graph_id)
    assert len(of_kind(events, "graph_submitted")) == 1
    assert len(of_kind(events, "node_started", "a")) == 1


async def test_concurrent_duplicates_create_one_graph(stack: InProcessStack) -> None:
    req = request([echo("a")], request_id="burst")
    resps = await asyncio.gather(*(stack.client.stub.SubmitGraph(req) for _ in range(6)))
    assert len({r.graph_id for r in resps}) == 1
    assert sum(r.created for r in resps) == 1
    assert (await stack.client.wait(resps[0].graph_id)).state == COMPLETED


async def test_same_request_id_with_another_body_is_rejected(stack: InProcessStack) -> None:
    first = await stack.client.submit(request([echo("a", v=1)], request_id="rid-1"))
    err = await rpc_error(
        stack.client.stub.SubmitGraph(request([echo("a", v=2)], request_id="rid-1"))
    )
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS
    assert first in (err.details() or "")
    infos = [d for d in error_details(err) if isinstance(d, error_details_pb2.ErrorInfo)]
    assert len(infos) == 1
    assert infos[0].reason == "REQUEST_ID_REUSED"
    assert infos[0].metadata["request_id"] == "rid-1"
    # Different inputs are a different body too.
    other_inputs = request([echo("a", v=1)], None, {"x": 1}, request_id="rid-1")
    err = await rpc_error(stack.client.stub.SubmitGraph(other_inputs))
    assert err.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_different_request_ids_make_different_graphs(stack: InProcessStack) -> None:
    a = await stack.client.submit(request([echo("a")], request_id="one"))
    b = await stack.client.submit(request([echo("a")], request_id="two"))
    c = await stack.client.submit(request([echo("a")]))
    d = await stack.client.submit(request([echo("a")]))
    assert len({a, b, c, d}) == 4
    for gid in (a, b, c, d):
        assert (await stack.client.wait(gid)).state == COMPLETED


# --- results -------------------------------------------------------------------------------


async def test_result_while_running_is_failed_precondition(stack: InProcessStack) -> None:
    gid = await stack.client.submit(
        request([echo("a", v=1), sleep("slow", 30)], [edge("a", "slow")])
    )
    await running(stack, gid, "slow")
    err = await rpc_error(stack.client.result(gid))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    (pf,) = error_details(err)
    assert isinstance(pf, error_details_pb2.PreconditionFailure)
    assert pf.violations[0].type == "GRAPH_NOT_FINISHED"
    assert pf.violations[0].subject == gid
    await stack.client.stub.CancelGraph(cancel_req(gid))
    res = await stack.client.result(gid)
    assert res.state == CANCELLED
    assert "cancelled" in res.error.message
    assert {k: plain(v) for k, v in res.node_outputs.items()} == {"a": {"v": 1}}


async def test_result_of_failed_graph(stack: InProcessStack) -> None:
    nodes = [echo("a", v=1), tool("bad", "fail", inputs={"message": "broken"}), echo("c")]
    gid, st = await stack.client.run(request(nodes, [edge("a", "bad"), edge("bad", "c")]))
    assert st.state == FAILED
    res = await stack.client.result(gid)
    assert res.state == FAILED
    assert res.error.error_class == graph_pb2.ERROR_CLASS_PERMANENT
    assert res.error.message == "broken"
    assert sorted(res.node_outputs) == ["a"]


# --- retention -----------------------------------------------------------------------------


async def test_finished_graph_expires_after_retention(
    redis_target: RedisTarget, key_prefix: str
) -> None:
    settings = stack_settings(redis_target.url, key_prefix, retention_s=2)
    async with InProcessStack(settings) as stack:
        req = request([sleep("s", 0.3)], request_id="keep-me-briefly")
        gid = await stack.client.submit(req)
        shard = parse_shard(gid, settings.shards)
        assert shard is not None
        sk = stack.store.keys.shard(shard)
        gk = sk.graph(gid)
        redis = stack.store.redis
        assert await redis.ttl(gk.meta) == -1  # no expiry while it runs
        assert (await stack.client.wait(gid)).state == COMPLETED
        # Every key the run has (a run without sub-graphs has no children index) expires.
        kept = [k for k in gk.all() if await redis.exists(k)]
        assert {gk.meta, gk.nodes, gk.topo, gk.events} <= set(kept)
        for key in kept:
            assert 0 < await redis.ttl(key) <= 2, key
        assert 0 < await redis.ttl(sk.request("keep-me-briefly")) <= 2
        listed = await stack.client.stub.ListGraphs(orchestrator_pb2.ListGraphsRequest())
        assert [g.graph_id for g in listed.graphs] == [gid]

        async def gone() -> bool:
            try:
                await stack.client.status(gid)
            except grpc.aio.AioRpcError as e:
                return e.code() == grpc.StatusCode.NOT_FOUND
            return False

        await eventually(gone, timeout=6, interval=0.1)

        async def unindexed() -> bool:
            scores = [await redis.zscore(sk.index(s), gid) for s in ("", str(COMPLETED))]
            return scores == [None, None]

        await eventually(unindexed, timeout=3)
        listed = await stack.client.stub.ListGraphs(orchestrator_pb2.ListGraphsRequest())
        assert not listed.graphs
        err = await rpc_error(stack.client.result(gid))
        assert err.code() == grpc.StatusCode.NOT_FOUND
        # The request_id is free again: the same request makes a new graph.
        again = await stack.client.stub.SubmitGraph(req)
        assert again.created
        assert again.graph_id != gid


# --- ListGraphs ----------------------------------------------------------------------------


async def list_all(stack: InProcessStack, **kw: Any) -> list[list[orchestrator_pb2.GraphSummary]]:
    pages: list[list[orchestrator_pb2.GraphSummary]] = []
    token = ""
    while True:
        resp = await stack.client.stub.ListGraphs(
            orchestrator_pb2.ListGraphsRequest(page_token=token, **kw)
        )
        pages.append(list(resp.graphs))
        token = resp.next_page_token
        if not token:
            return pages
        assert len(pages) < 20


async def test_list_graphs_pages_newest_first(stack: InProcessStack) -> None:
    gids = []
    for i in range(5):
        gid, _ = await stack.client.run(request([echo("a")], name=f"g{i}"))
        gids.append(gid)
    pages = await list_all(stack, page_size=2)
    assert [len(p) for p in pages] == [2, 2, 1]
    listed = [g for p in pages for g in p]
    assert [g.graph_id for g in listed] == gids[::-1]
    assert [g.name for g in listed] == [f"g{i}" for i in range(4, -1, -1)]
    times = [g.create_time.ToMilliseconds() for g in listed]
    assert times == sorted(times, reverse=True)
    assert all(g.state == COMPLETED and g.end_time.seconds > 0 for g in listed)


async def test_list_graphs_pages_concurrent_submissions_once(stack: InProcessStack) -> None:
    # Submitted together, several share a creation millisecond: the cursor still
    # visits each graph exactly once.
    gids = await asyncio.gather(*(stack.client.submit(request([echo("a")])) for _ in range(9)))
    pages = await list_all(stack, page_size=2)
    listed = [g.graph_id for p in pages for g in p]
    assert sorted(listed) == sorted(gids)
    assert len(listed) == len(set(listed))
    for gid in gids:
        await stack.client.wait(gid)


async def test_list_graphs_state_filter(stack: InProcessStack) -> None:
    done = [(await stack.client.run(request([echo("a")])))[0] for _ in range(2)]
    slow = await stack.client.submit(request([sleep("s", 30)]))
    await running(stack, slow, "s")
    running_page = await list_all(stack, state=G.GRAPH_STATE_RUNNING)
    assert [g.graph_id for p in running_page for g in p] == [slow]
    await stack.client.stub.CancelGraph(cancel_req(slow))
    completed = await list_all(stack, state=COMPLETED)
    assert [g.graph_id for p in completed for g in p] == done[::-1]
    cancelled = await list_all(stack, state=CANCELLED)
    assert [g.graph_id for p in cancelled for g in p] == [slow]
    assert not [g for p in await list_all(stack, state=G.GRAPH_STATE_RUNNING) for g in p]
    everything = await list_all(stack)
    assert [g.graph_id for p in everything for g in p] == [slow, *done[::-1]]


async def test_list_graphs_rejects_bad_arguments(stack: InProcessStack) -> None:
    for req in (
        orchestrator_pb2.ListGraphsRequest(page_token="not-a-token"),
        orchestrator_pb2.ListGraphsRequest(page_size=1001),
    ):
        err = await rpc_error(stack.client.stub.ListGraphs(req))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        (br,) = error_details(err)
        assert isinstance(br, error_details_pb2.BadRequest)
        assert br.field_violations[0].field in ("page_token", "page_size")


# --- the event log -------------------------------------------------------------------------


def diamond() -> orchestrator_pb2.SubmitGraphRequest:
    nodes = [echo("a"), echo("b"), echo("c"), echo("d")]
    return request(nodes, [edge("a", "b"), edge("a", "c"), edge("b", "d"), edge("c", "d")])


async def test_event_pages_match_the_watch_stream(stack: InProcessStack) -> None:
    gid, _ = await stack.client.run(diamond())
    watched = await stack.client.watch(gid)
    n = len(watched)
    assert n == 11  # submitted, started, 4 x (node started, completed), completed
    assert [e.seq for e in watched] == list(range(1, n + 1))
    assert kinds(watched)[0] == "graph_submitted"
    assert kinds(watched)[-1] == "graph_completed"
    paged: list[G.Event] = []
    token = ""
    while True:
        resp = await stack.client.stub.ListGraphEvents(
            orchestrator_pb2.ListGraphEventsRequest(graph_id=gid, page_size=3, page_token=token)
        )
        assert len(resp.events) <= 3
        paged.extend(resp.events)
        token = resp.next_page_token
        if not token:
            break
    assert paged == watched
    assert all(e.graph_id == gid for e in paged)
    after = await stack.client.stub.ListGraphEvents(
        orchestrator_pb2.ListGraphEventsRequest(graph_id=gid, after_seq=n - 2)
    )
    assert list(after.events) == watched[-2:]
    assert not after.next_page_token
    err = await rpc_error(
        stack.client.stub.ListGraphEvents(
            orchestrator_pb2.ListGraphEventsRequest(graph_id=gid, page_token="%%%")
        )
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_watch_resumes_from_a_cursor(stack: InProcessStack) -> None:
    gid, _ = await stack.client.run(diamond())
    full = await stack.client.watch(gid)
    mid = len(full) // 2
    rest = await stack.client.watch(gid, after_seq=full[mid].seq)
    assert rest == full[mid + 1 :]
    started = time.monotonic()
    assert await watch_raw(stack.client, gid, after_seq=full[-1].seq) == []
    assert time.monotonic() - started < 0.4  # ended at once, not after a heartbeat
    err = await rpc_error(watch_raw(stack.client, new_graph_id(0)))
    assert err.code() == grpc.StatusCode.NOT_FOUND


async def test_watch_sends_heartbeats_while_idle(stack: InProcessStack) -> None:
    gid = await stack.client.submit(request([echo("a"), sleep("s", 1.2)], [edge("a", "s")]))
    stream = await watch_raw(stack.client, gid)
    beats = [i for i, e in enumerate(stream) if e.WhichOneof("payload") == "heartbeat"]
    assert beats, "no heartbeat during a 1.2 s idle stretch (heartbeat_ms=500)"
    for i in beats:
        last = [e for e in stream[:i] if e.WhichOneof("payload") != "heartbeat"][-1]
        assert stream[i].seq == last.seq
        assert stream[i].graph_id == gid
    events = [e for e in stream if e.WhichOneof("payload") != "heartbeat"]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert kinds(events)[-1] == "graph_completed"
    assert stream[-1] == events[-1]  # the stream ends with the terminal event
    assert events == await stack.client.history(gid)


async def test_watch_from_before_the_start_replays_then_follows(stack: InProcessStack) -> None:
    gid = await stack.client.submit(request([sleep("s", 0.4), echo("b")], [edge("s", "b")]))
    live = asyncio.create_task(stack.client.watch(gid))
    await running(stack, gid, "s")
    late = asyncio.create_task(stack.client.watch(gid, after_seq=1))
    first, second = await asyncio.gather(live, late)
    assert first[1:] == second
    assert kinds(first)[-1] == "graph_completed"
    assert first == await stack.client.history(gid)
