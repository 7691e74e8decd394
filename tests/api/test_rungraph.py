"""RunGraph (submit and watch in one call) and WatchGraph's batch mode: the same events as a
SubmitGraph followed by a WatchGraph, idempotent by request_id, submission errors before any
message; batch messages carry the events in order, split by size."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2

from dago.store.events import batched, encode, graph_prefix
from dago.v1 import execution_pb2, orchestrator_pb2
from dago_client import AsyncDagoClient, DagoClient
from harness import InProcessStack, MakeStack, echo, edge, error_details, kinds, request


@pytest.fixture
async def stack(make_stack: MakeStack) -> InProcessStack:
    return await make_stack()


def diamond() -> orchestrator_pb2.SubmitGraphRequest:
    return request(
        [echo("a", x="{{ inputs.x }}"), echo("b", y="{{ nodes.a.output.x }}"), echo("c")],
        [edge("a", "b"), edge("a", "c")],
        inputs={"x": 7},
    )


def run_request(rid: str = "", batch: bool = False) -> orchestrator_pb2.RunGraphRequest:
    sub = diamond()
    return orchestrator_pb2.RunGraphRequest(
        graph=sub.graph, inputs=sub.inputs, request_id=rid, batch=batch
    )


async def events_of(call: grpc.aio.UnaryStreamCall) -> list[execution_pb2.Event]:  # type: ignore[type-arg]
    out: list[execution_pb2.Event] = []
    async for msg in call:
        for ev in msg.events if len(msg.events) else (msg.event,):
            if ev.WhichOneof("payload") != "heartbeat":
                out.append(ev)
    return out


async def test_a_run_in_one_call_streams_every_event_of_the_new_run(stack: InProcessStack) -> None:
    events = await events_of(stack.client.stub.RunGraph(run_request(), timeout=30))
    assert kinds(events)[0] == "graph_submitted"
    assert kinds(events)[-1] == "graph_completed"
    gid = events[0].graph_id
    assert gid and all(e.graph_id == gid for e in events)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    # The same log a watcher of the run reads, and the run really completed.
    assert events == await stack.client.watch(gid)
    assert (await stack.client.status(gid)).state == execution_pb2.GRAPH_STATE_COMPLETED
    result = json_format.MessageToDict(
        await stack.client.result(gid), preserving_proto_field_name=True
    )
    assert result["node_outputs"]["b"] == {"y": 7}


async def test_the_same_request_id_streams_the_same_run_again(stack: InProcessStack) -> None:
    first = await events_of(stack.client.stub.RunGraph(run_request("once"), timeout=30))
    again = await events_of(stack.client.stub.RunGraph(run_request("once"), timeout=30))
    assert again == first
    # A SubmitGraph of the same graph and inputs with that id names the same run too.
    sub = diamond()
    sub.request_id = "once"
    resp = await stack.client.stub.SubmitGraph(sub, timeout=10)
    assert (resp.graph_id, resp.created) == (first[0].graph_id, False)
    # A different request under that id is refused before any message.
    other = run_request("once")
    other.inputs["x"] = 8
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await events_of(stack.client.stub.RunGraph(other, timeout=10))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_an_invalid_graph_is_refused_before_any_message(stack: InProcessStack) -> None:
    bad = run_request()
    bad.graph.edges.add(**{"from": "a", "to": "nowhere"})
    call = stack.client.stub.RunGraph(bad, timeout=10)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    (details,) = error_details(err.value)
    assert isinstance(details, error_details_pb2.BadRequest)
    assert any("nowhere" in v.description for v in details.field_violations)


async def test_batch_mode_carries_the_same_events_in_fewer_messages(stack: InProcessStack) -> None:
    messages = [msg async for msg in stack.client.stub.RunGraph(run_request(batch=True))]
    assert all(not m.HasField("event") and len(m.events) for m in messages)
    events = [e for m in messages for e in m.events]
    gid = events[0].graph_id
    assert events == await stack.client.watch(gid)
    # A watch of the finished run in batch mode: its whole log in one message.
    watch = orchestrator_pb2.WatchGraphRequest(graph_id=gid, batch=True)
    replay = [msg async for msg in stack.client.stub.WatchGraph(watch, timeout=10)]
    assert len(replay) == 1 and list(replay[0].events) == events
    # Resumed after an event: the rest only.
    watch.after_seq = 3
    rest = [e async for msg in stack.client.stub.WatchGraph(watch, timeout=10) for e in msg.events]
    assert rest == events[3:]


async def test_the_async_client_runs_a_graph_in_one_call(stack: InProcessStack) -> None:
    async with AsyncDagoClient(target=f"127.0.0.1:{stack.port}") as dago:
        events = [e async for e in dago.run(diamond(), request_id="client-run")]
        assert kinds(events)[-1] == "graph_completed"
        again = [e async for e in dago.run(diamond(), request_id="client-run")]
        assert again == events
        assert [e async for e in dago.watch(events[0].graph_id, after_seq=2)] == events[2:]


@pytest.mark.unit
def test_batched_messages_parse_to_the_events_in_order_and_respect_the_size_limit() -> None:
    gid = "2-01JDXXXXXXXXXXXXXXXXXXXXXX"
    prefix = graph_prefix(gid)
    stored = [b"llm_delta", b"1700000000000", b"a", b"1", b"1", b'{"text": "' + b"x" * 300 + b'"}']
    one = [encode(gid, seq, stored, prefix) for seq in range(1, 11)]
    singles = [orchestrator_pb2.WatchGraphResponse.FromString(m).event for m in one]
    parsed = [orchestrator_pb2.WatchGraphResponse.FromString(m) for m in batched(one, limit=1000)]
    assert [e for m in parsed for e in m.events] == singles
    assert all(len(m.SerializeToString()) <= 1000 for m in parsed)
    assert len(parsed) > 1
    # One event over the limit still goes, alone.
    assert [
        len(m.events)
        for m in map(orchestrator_pb2.WatchGraphResponse.FromString, batched(one, limit=10))
    ] == [1] * 10


async def test_the_blocking_client_runs_a_graph_in_one_call(stack: InProcessStack) -> None:
    def run() -> list[execution_pb2.Event]:
        with DagoClient(target=f"127.0.0.1:{stack.port}") as dago:
            return list(dago.run(diamond(), request_id="sync-run"))

    events = await asyncio.to_thread(run)
    assert kinds(events)[0] == "graph_submitted" and kinds(events)[-1] == "graph_completed"
    assert events == await stack.client.watch(events[0].graph_id)
