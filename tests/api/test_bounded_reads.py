"""Reads of a run are bounded: GetGraphStatus's BASIC view leaves out what nodes produced,
the FULL view and GetGraphResult refuse a run too large for one response (before reading
it), ListNodeAttempts pages through one node's attempts, and a page of events or attempts
ends before 1 MiB."""

from __future__ import annotations

import grpc
import pytest

from dago.v1 import execution_pb2, orchestrator_pb2
from harness import (
    TERMINAL,
    InProcessStack,
    MakeStack,
    echo,
    edge,
    error_details,
    eventually,
    request,
    rpc_error,
)

COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED


@pytest.fixture
async def stack(make_stack: MakeStack) -> InProcessStack:
    return await make_stack(max_message_bytes=512 * 1024)


async def run_basic(stack: InProcessStack, req: orchestrator_pb2.SubmitGraphRequest) -> str:
    """Submit and wait for the end, reading the status in its BASIC view."""
    gid = await stack.client.submit(req)

    async def ended() -> bool:
        status = (await stack.client.stub.GetGraphStatus(basic(gid))).status
        return status.state in TERMINAL

    await eventually(ended, 60)
    return gid


def basic(gid: str) -> orchestrator_pb2.GetGraphStatusRequest:
    return orchestrator_pb2.GetGraphStatusRequest(
        graph_id=gid, view=orchestrator_pb2.GRAPH_STATUS_VIEW_BASIC
    )


def loop(times: int, size: int) -> orchestrator_pb2.SubmitGraphRequest:
    """A self-loop node that runs ``times`` times, each output ``size`` characters."""
    node = {**echo("n", s="{{ inputs.s }}", i="{{ has(nodes.n) ? nodes.n.output.i + 1 : 1 }}")}
    node["max_iterations"] = times
    return request(
        [node], [edge("n", "n", condition=f"nodes.n.output.i < {times}")], inputs={"s": "q" * size}
    )


async def test_the_basic_view_leaves_out_outputs_inputs_and_outputs_of_attempts(
    stack: InProcessStack,
) -> None:
    gid, st = await stack.client.run(loop(3, 100))
    assert st.state == COMPLETED
    full = st.nodes[0]
    assert full.HasField("output") and all(a.HasField("input") for a in full.attempts)
    small = (await stack.client.stub.GetGraphStatus(basic(gid))).status.nodes[0]
    assert not small.HasField("output")
    assert [(a.iteration, a.state) for a in small.attempts] == [
        (a.iteration, a.state) for a in full.attempts
    ]
    assert not any(a.HasField("input") or a.HasField("output") for a in small.attempts)
    assert small.state == full.state and small.usage == full.usage


async def test_a_run_too_large_for_one_response_is_read_a_node_at_a_time(
    stack: InProcessStack,
) -> None:
    """40 iterations of 20 KB: ~2.4 MB stored, over half the 512 KB messages of this API."""
    gid = await run_basic(stack, loop(40, 20_000))
    for call in (
        stack.client.stub.GetGraphStatus(orchestrator_pb2.GetGraphStatusRequest(graph_id=gid)),
        stack.client.stub.GetGraphResult(orchestrator_pb2.GetGraphResultRequest(graph_id=gid)),
    ):
        err = await rpc_error(call)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err
        assert "ListNodeAttempts" in (err.details() or "")
        (pf,) = [d for d in error_details(err) if hasattr(d, "violations")]
        assert pf.violations[0].type == "GRAPH_TOO_LARGE"
    status = (await stack.client.stub.GetGraphStatus(basic(gid))).status
    assert status.state == COMPLETED
    assert [a.iteration for a in status.nodes[0].attempts] == list(range(1, 41))

    seen: list[tuple[int, int]] = []
    token = ""
    pages = 0
    while True:
        page = await stack.client.stub.ListNodeAttempts(
            orchestrator_pb2.ListNodeAttemptsRequest(
                graph_id=gid, node_id="n", page_size=7, page_token=token
            )
        )
        pages += 1
        assert 1 <= len(page.attempts) <= 7
        for a in page.attempts:
            seen.append((a.iteration, a.attempt))
            assert len(a.output.struct_value["s"]) == 20_000
        token = page.next_page_token
        if not token:
            break
    assert seen == [(i, 1) for i in range(1, 41)]
    assert pages >= 6  # 7 a page, fewer where 256 KiB (half a message here) ends it


async def test_list_node_attempts_refuses_what_it_does_not_know(stack: InProcessStack) -> None:
    gid, _ = await stack.client.run(request([echo("a", v=1)]))
    stub = stack.client.stub
    err = await rpc_error(
        stub.ListNodeAttempts(orchestrator_pb2.ListNodeAttemptsRequest(graph_id=gid, node_id="b"))
    )
    assert err.code() == grpc.StatusCode.NOT_FOUND
    for token in ("nope", "YTox", "ZTox"):  # not base64 of ours; "a:1" (short); "e:1"
        err = await rpc_error(
            stub.ListNodeAttempts(
                orchestrator_pb2.ListNodeAttemptsRequest(
                    graph_id=gid, node_id="a", page_token=token
                )
            )
        )
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, token
    page = await stub.ListNodeAttempts(
        orchestrator_pb2.ListNodeAttemptsRequest(graph_id=gid, node_id="a")
    )
    assert [(a.iteration, a.attempt) for a in page.attempts] == [(1, 1)]
    assert not page.next_page_token


async def test_a_page_of_events_ends_before_one_mebibyte(stack: InProcessStack) -> None:
    """Eight nodes of 200 KB outputs: their node_completed events cannot share a page."""
    assert stack.settings.max_message_bytes == 512 * 1024
    nodes = [echo(f"n{i}", s="{{ inputs.s }}") for i in range(8)]
    gid = await run_basic(stack, request(nodes, inputs={"s": "z" * 200_000}))
    sizes = []
    token = ""
    events = []
    while True:
        page = await stack.client.stub.ListGraphEvents(
            orchestrator_pb2.ListGraphEventsRequest(graph_id=gid, page_size=1000, page_token=token)
        )
        sizes.append(page.ByteSize())
        events += page.events
        token = page.next_page_token
        if not token:
            break
    # The page limit is 1 MiB, or half of the API's 512 KiB messages here.
    assert len(sizes) > 1 and all(s <= 256 * 1024 for s in sizes), sizes
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].WhichOneof("payload") == "graph_completed"
