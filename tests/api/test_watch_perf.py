"""WatchGraph's read path: encoded events equal decoded ones, the watchers of one graph share
one read of its log, and every watcher still gets the whole log in order, whatever its
cursor, also when it falls behind the shared window; a live watcher whose client reads too
slowly is ended with ABORTED naming the last event it was sent, and resumes from
there without a gap."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis

from dago.api import watch
from dago.store.events import decode, encode, graph_prefix
from dago.v1 import execution_pb2, orchestrator_pb2, orchestrator_pb2_grpc
from harness import (
    InProcessStack,
    echo,
    edge,
    error_details,
    kinds,
    request,
    stack_settings,
    tool,
    watch_raw,
)
from redisfixture import RedisServer

GID = "3-01JDXXXXXXXXXXXXXXXXXXXXXX"


def _j(value: Any) -> bytes:
    return json.dumps(value).encode()


def _ev(
    kind: str,
    ts: str,
    node: bytes = b"",
    attempt: bytes = b"",
    iteration: bytes = b"",
    detail: bytes = b"",
) -> list[bytes]:
    """A stored event, packed as schema.Event says (a graph's own events have no node)."""
    return [kind.encode(), ts.encode(), node, attempt, iteration, detail]


STORED: list[list[bytes]] = [
    _ev("graph_submitted", "1732666666000", detail=_j({"name": "g", "entries": ["a"]})),
    _ev("graph_started", "1732666666001"),
    _ev(
        "node_started",
        "1732666666002",
        node=b"a",
        attempt=b"1",
        iteration=b"0",
        detail=_j({"w": "worker-1"}),
    ),
    _ev(
        "node_started",
        "1732666666002",
        node=b"a",
        attempt=b"2",
        iteration=b"3",
        detail=_j({"w": "w", "r": True}),
    ),
    _ev(
        "node_completed",
        "1732666666003",
        node=b"a",
        attempt=b"1",
        iteration=b"0",
        detail=_j({"o": {"x": 1, "y": [1.5, "s", None, {}]}, "ms": 5, "u": {"i": 3, "c": 0.5}}),
    ),
    _ev("node_completed", "0", node=b"", attempt=b"0", iteration=b"0", detail=_j({})),
    _ev(
        "llm_delta",
        "1732666666004",
        node=b"l",
        attempt=b"1",
        iteration=b"0",
        detail=_j({"text": "héllo ☃"}),
    ),
    _ev(
        "llm_delta",
        "1732666666004",
        node=b"l",
        attempt=b"1",
        iteration=b"0",
        detail=_j({"text": ""}),
    ),
    _ev("node_skipped", "1732666666999", node=b"x", attempt=b"0", iteration=b"0"),
    _ev(
        "node_cancelled",
        "1732666666999",
        node=b"x",
        attempt=b"1",
        iteration=b"0",
        detail=_j({"reason": "cancelled by a client"}),
    ),
    _ev(
        "router_decision",
        "1732666666009",
        node=b"r",
        attempt=b"1",
        iteration=b"2",
        detail=_j({"route": "a", "targets": ["x"], "confidence": 0.5, "reason": "r"}),
    ),
    _ev(
        "tool_call",
        "1732666666009",
        node=b"t",
        attempt=b"1",
        iteration=b"0",
        detail=_j({"id": "c1", "tool": "t", "args": {"q": [1, 2]}}),
    ),
    _ev(
        "tool_result",
        "1732666666009",
        node=b"t",
        attempt=b"1",
        iteration=b"0",
        detail=_j({"id": "c1", "tool": "t", "result": "ok"}),
    ),
    _ev(
        "usage",
        "1732666666009",
        node=b"l",
        attempt=b"1",
        iteration=b"0",
        detail=_j({"u": {"i": 10, "o": 20}, "provider": "anthropic", "model": "m"}),
    ),
    _ev(
        "loop_iteration",
        "1732666666009",
        node=b"h",
        attempt=b"1",
        iteration=b"300",
        detail=_j({"iteration": 300, "from": "z", "exhausted": True}),
    ),
    _ev(
        "node_retrying",
        "1732666666009",
        node=b"a",
        attempt=b"1",
        iteration=b"0",
        detail=_j({"e": {"c": 2, "m": "429", "r": True}, "b": 250, "n": 2}),
    ),
    _ev(
        "node_failed",
        "1732666666009",
        node=b"a",
        attempt=b"3",
        iteration=b"0",
        detail=_j({"e": {"c": 3, "m": "bad"}}),
    ),
    _ev(
        "node_dead_lettered",
        "1732666666009",
        node=b"a",
        attempt=b"1",
        iteration=b"0",
        detail=_j({"e": {"c": 2, "m": "x"}, "n": 5, "id": "1732666666009-0"}),
    ),
    _ev(
        "node_requeued",
        "1732666666010",
        node=b"a",
        attempt=b"1",
        iteration=b"0",
        detail=_j({"id": "1732666666009-0"}),
    ),
    _ev(
        "node_waiting",
        "1732666666011",
        node=b"review",
        attempt=b"1",
        iteration=b"2",
        detail=_j(
            {
                "prompt": "ok?",
                "display": {"draft": {"t": "x", "n": [1, 2]}, "empty": []},
                "decisions": ["approve", "reject"],
                "schema": '{"type": "object"}',
                "td": "",
                "i": 2,
                "since": 1732666666011,
                "deadline": 1732666667011,
            }
        ),
    ),
    _ev(
        "signal_received",
        "1732666666012",
        node=b"review",
        attempt=b"1",
        iteration=b"2",
        detail=_j(
            {
                "decision": "approve",
                "payload": None,
                "actor": "alice",
                "signal_id": "s-1",
                "comment": "",
                "timed_out": False,
            }
        ),
    ),
    _ev("graph_cancelled", "1732666666999", detail=_j({"reason": "by a client"})),
    _ev("graph_failed", "1732666666009", detail=_j({"e": {"c": 2, "m": "x"}, "n": "a"})),
    _ev("graph_completed", "1732666666009", detail=_j({"u": {"i": 1, "o": 2}})),
]


@pytest.mark.parametrize("fields", STORED, ids=[f[0].decode() for f in STORED])
@pytest.mark.parametrize("seq", [0, 1, 127, 128, 100_000, 2**40])
def test_encoded_event_is_the_decoded_event(fields: list[bytes], seq: int) -> None:
    want = orchestrator_pb2.WatchGraphResponse(event=decode(GID, seq, fields))
    got = orchestrator_pb2.WatchGraphResponse.FromString(encode(GID, seq, fields))
    assert got == want
    shared = encode(GID, seq, fields, graph_prefix(GID))
    assert orchestrator_pb2.WatchGraphResponse.FromString(shared) == want
    assert got.event.WhichOneof("payload") == fields[0].decode()


def _fan(width: int) -> orchestrator_pb2.SubmitGraphRequest:
    mids = [echo(f"m{i}") for i in range(width)]
    edges = [edge("src", f"m{i}") for i in range(width)]
    edges += [edge(f"m{i}", "sink") for i in range(width)]
    return request([echo("src"), *mids, echo("sink")], edges)


async def _xranges(url: str) -> int:
    r = aioredis.Redis.from_url(url)
    try:
        stats = await r.info("commandstats")
        return int(stats.get("cmdstat_xrange", {}).get("calls", 0))
    finally:
        await r.aclose()


async def test_watchers_of_a_graph_share_one_read(private_redis: RedisServer) -> None:
    settings = stack_settings(private_redis.url, "wshare")
    async with InProcessStack(settings) as stack:
        gid, st = await stack.client.run(_fan(60))
        assert st.state == execution_pb2.GRAPH_STATE_COMPLETED
        stored = await stack.client.history(gid)
        assert len(stored) > 120

        before = await _xranges(private_redis.url)
        seen = await asyncio.gather(*(stack.client.watch(gid) for _ in range(40)))
        reads = await _xranges(private_redis.url) - before
        for events in seen:
            assert events == stored
        # Each watcher alone would read the log at least once; together they share reads
        # (at most a few: watchers that started while the first read was in flight).
        assert reads <= 5, reads

        # From any cursor: exactly the events after it.
        cursors = [0, 1, len(stored) // 2, len(stored) - 1]
        tails = await asyncio.gather(*(stack.client.watch(gid, after_seq=c) for c in cursors))
        for c, events in zip(cursors, tails, strict=True):
            assert events == stored[c:]
        assert await watch_raw(stack.client, gid, after_seq=len(stored)) == []


async def test_live_watchers_behind_a_small_window_get_everything(
    private_redis: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A window and pages far smaller than the log: watchers fall behind the shared window,
    # read on their own up to it, and join it again.
    monkeypatch.setattr(watch, "PAGE", 7)
    monkeypatch.setattr(watch, "BATCH", 3)
    monkeypatch.setattr(watch, "WINDOW", 10)
    settings = stack_settings(private_redis.url, "wsmall")
    async with InProcessStack(settings, workers=2) as stack:
        gid = await stack.client.submit(_fan(40))
        early = [asyncio.create_task(stack.client.watch(gid)) for _ in range(5)]
        late = []
        for c in (0, 5, 30):
            await asyncio.sleep(0.01)
            late.append(asyncio.create_task(stack.client.watch(gid, after_seq=c)))
        await stack.client.wait(gid)
        stored = await stack.client.history(gid)
        assert kinds(stored)[-1] == "graph_completed"
        for t in early:
            assert await t == stored
        for c, t in zip((0, 5, 30), late, strict=True):
            assert await t == stored[c:]
        # A finished graph's log is replayed by new watchers too.
        again = await asyncio.gather(*(stack.client.watch(gid, after_seq=c) for c in (0, 9)))
        assert again == [stored, stored[9:]]


async def test_many_graphs_watched_at_once_share_a_few_connections(
    private_redis: RedisServer,
) -> None:
    # More concurrent reads than the hub's connections (16): reads wait for one in turn.
    settings = stack_settings(private_redis.url, "wmany")
    chain = request([echo("a"), echo("b"), echo("c")], [edge("a", "b"), edge("b", "c")])
    async with InProcessStack(settings, workers=2) as stack:
        gids = await asyncio.gather(*(stack.client.submit(chain) for _ in range(60)))
        watched = await asyncio.gather(*(stack.client.watch(g) for g in gids for _ in range(2)))
        for i, gid in enumerate(gids):
            stored = await stack.client.history(gid)
            assert kinds(stored)[-1] == "graph_completed"
            assert watched[2 * i] == stored
            assert watched[2 * i + 1] == stored


async def test_a_watcher_that_falls_too_far_behind_is_dropped_and_resumes_without_a_gap(
    private_redis: RedisServer,
) -> None:
    # DAGO_WATCH_MAX_LAG_S=1: a client that stops reading for 3 s while its graph emits
    # (its HTTP/2 window fills: no BDP probing, the 64 KiB default) is behind by more than
    # that when it reads again.
    settings = stack_settings(private_redis.url, "wlag", watch_max_lag_s=1)
    talk = request(
        [
            tool(
                "talk",
                "chatter",
                inputs={"count": 600, "size": 1000, "batch": 20, "interval": 0.05},
            )
        ]
    )
    async with InProcessStack(settings) as stack:
        gid = await stack.client.submit(talk)
        channel = grpc.aio.insecure_channel(
            f"127.0.0.1:{stack.port}", options=[("grpc.http2.bdp_probe", 0)]
        )
        try:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
            call = stub.WatchGraph(orchestrator_pb2.WatchGraphRequest(graph_id=gid), timeout=60)
            got = [(await call.read()).event for _ in range(5)]
            await asyncio.sleep(3)
            try:
                while (msg := await call.read()) is not grpc.aio.EOF:
                    got.append(msg.event)
                raise AssertionError("the slow watcher was not dropped")
            except grpc.aio.AioRpcError as e:
                err = e
        finally:
            await channel.close()
        assert err.code() == grpc.StatusCode.ABORTED, err
        assert "reads too slowly" in (err.details() or ""), err.details()
        (info,) = [d for d in error_details(err) if d.DESCRIPTOR.name == "ErrorInfo"]
        assert info.reason == "WATCH_TOO_SLOW"
        events = [e for e in got if e.WhichOneof("payload") != "heartbeat"]
        last = int(info.metadata["last_seq"])
        assert last == events[-1].seq  # every event it was sent reached the client
        assert f"after_seq={last}" in (err.details() or "")

        # Watching again from there misses nothing and repeats nothing.
        rest = await stack.client.watch(gid, after_seq=last)
        stored = await stack.client.history(gid)
        assert events + rest == stored
        assert kinds(stored)[-1] == "graph_completed" and len(stored) > 600
