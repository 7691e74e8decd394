"""Approval of agent tool calls (docs/semantics.md, "Approval of agent tool calls"), through
the real stack: the real ``anthropic`` SDK against the fake Messages API over HTTP, real
tools (tests/support/testtools.py), the real API, workers and Redis functions.

Covered: a call approved (the tool runs, the model gets its result; on the single Redis and
the cluster), rejected (the model
gets an error result carrying the comment and is called for its next turn), edited (the
tool runs with the edited arguments; edited arguments the tool's schema refuses are
INVALID_ARGUMENT naming the payload); the wait in ListWaits; a restart of every process
while the agent waits (another worker resumes it from the conversation kept in Redis
without calling the model again for the turns done); cancel while the agent waits;
patterns that match none of the node's tools refused at submit.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from dago.v1 import execution_pb2, orchestrator_pb2
from fake_anthropic import FakeAnthropic, Text, ToolUse
from harness import (
    Client,
    InProcessStack,
    MakeStack,
    error_details,
    eventually,
    node_status,
    plain,
    request,
    rpc_error,
)
from redisfixture import RedisServer, RedisTarget

KEY = "sk-ant-test-agent-approval"
COMPLETED = execution_pb2.GRAPH_STATE_COMPLETED
CANCELLED = execution_pb2.GRAPH_STATE_CANCELLED


def agent(tools: list[str], approve: list[str], **fields: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "llm": {"prompt": "Where is order A-100?"},
        "tools": tools,
        "approvalRequiredTools": approve,
        **fields,
    }
    return {"id": "helper", "agent": spec}


def settings(fake: FakeAnthropic) -> dict[str, Any]:
    return {"anthropic_api_key": KEY, "anthropic_base_url": fake.url, "llm_provider": "anthropic"}


@pytest.fixture
async def stack(fake: FakeAnthropic, make_stack: MakeStack) -> InProcessStack:
    return await make_stack(**settings(fake))


@pytest.fixture
async def either(
    fake: FakeAnthropic, redis_target: RedisTarget, make_stack: MakeStack
) -> InProcessStack:
    """On the single Redis and on the cluster."""
    return await make_stack(redis_target, **settings(fake))


async def waiting(c: Client, gid: str) -> None:
    async def check() -> bool:
        n = node_status(await c.status(gid), "helper")
        return n.state == execution_pb2.NODE_STATE_WAITING

    await eventually(check, 20.0)


def decide(
    gid: str, decision: str, payload: Any = None, **fields: Any
) -> orchestrator_pb2.SignalGraphRequest:
    req = orchestrator_pb2.SignalGraphRequest(
        graph_id=gid, node_id="helper", decision=decision, **fields
    )
    if payload is not None:
        v = struct_pb2.Value()
        v.struct_value.update(payload)
        req.payload.CopyFrom(v)
    return req


def results_sent(fake: FakeAnthropic, n: int) -> list[dict[str, Any]]:
    """The tool_result blocks the n-th model request (0-based) carried."""
    last = fake.requests[n].body["messages"][-1]
    return [b for b in last["content"] if b.get("type") == "tool_result"]


def kinds(events: list[execution_pb2.Event]) -> list[str]:
    return [
        k
        for e in events
        if (k := e.WhichOneof("payload"))
        in ("tool_call", "node_waiting", "signal_received", "tool_result")
    ]


def text_of(block: dict[str, Any]) -> str:
    content = block["content"]
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content)


async def test_an_approved_call_runs_and_its_result_goes_to_the_model(
    either: InProcessStack, fake: FakeAnthropic
) -> None:
    stack = either
    c = stack.client
    fake.script = [
        ToolUse({"order_id": "A-100"}, "order_status", id="toolu_1"),
        Text("It has shipped."),
    ]
    gid = await c.submit(request([agent(["order_status", "echo"], ["order_*"])]))
    await waiting(c, gid)
    # The inbox lists it: the tool, its arguments and the call id; the three decisions.
    resp = await c.stub.ListWaits(orchestrator_pb2.ListWaitsRequest(), timeout=10)
    (w,) = [w for w in resp.waits if w.graph_id == gid]
    assert plain(w.display) == {
        "tool": "order_status",
        "arguments": {"order_id": "A-100"},
        "id": "toolu_1",
    }
    assert list(w.decisions) == ["approve", "reject", "edit"]
    assert json.loads(w.payload_schema)["required"] == ["order_id"]
    assert len(fake.requests) == 1
    # GetGraphStatus shows the wait on the node.
    nw = node_status(await c.status(gid), "helper").wait
    assert list(nw.decisions) == ["approve", "reject", "edit"] and "order_status" in nw.prompt
    # The node holds no pending work item while it waits.
    pending = await stack.store.redis.xpending(
        stack.store.keys.shard(int(gid.split("-")[0])).work, "workers"
    )
    assert pending["pending"] == 0
    ok = await c.stub.SignalGraph(decide(gid, "approve"), timeout=10)
    assert ok.decision == "approve"
    st = await c.wait(gid)
    assert st.state == COMPLETED, st
    out = plain(node_status(st, "helper").output)
    assert out["text"] == "It has shipped." and out["turns"] == 2 and out["tool_calls"] == 1
    assert len(fake.requests) == 2
    (sent,) = results_sent(fake, 1)
    assert "shipped" in text_of(sent) and not sent.get("is_error")
    events = await c.history(gid)
    assert kinds(events) == ["tool_call", "node_waiting", "signal_received", "tool_result"]
    # A second signal for that call lost: ABORTED naming the winner.
    late = await rpc_error(c.stub.SignalGraph(decide(gid, "reject"), timeout=10))
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION  # the run ended


async def test_a_rejected_call_goes_back_as_an_error_carrying_the_comment(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    c = stack.client
    fake.script = [
        ToolUse({"order_id": "A-100"}, "order_status", id="toolu_1"),
        Text("I will not look it up then."),
    ]
    gid = await c.submit(request([agent(["order_status"], ["order_status"])]))
    await waiting(c, gid)
    await c.stub.SignalGraph(decide(gid, "reject", comment="ask the customer first"), timeout=10)
    st = await c.wait(gid)
    assert st.state == COMPLETED, st
    assert len(fake.requests) == 2  # the model's next turn was called
    (sent,) = results_sent(fake, 1)
    assert sent.get("is_error") is True
    assert "rejected" in text_of(sent) and "ask the customer first" in text_of(sent)
    results = [e for e in await c.history(gid) if e.WhichOneof("payload") == "tool_result"]
    assert "ask the customer first" in results[0].tool_result.error


async def test_an_edited_call_runs_with_the_edited_arguments(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    c = stack.client
    fake.script = [
        ToolUse({"order_id": "A-100"}, "order_status", id="toolu_1"),
        Text("It is delayed."),
    ]
    gid = await c.submit(request([agent(["order_status"], ["order_status"])]))
    await waiting(c, gid)
    # Arguments the tool's input schema refuses: INVALID_ARGUMENT on payload, nothing recorded.
    for bad in ({"order_id": "nope"}, {"order": "A-200"}):
        err = await rpc_error(c.stub.SignalGraph(decide(gid, "edit", bad), timeout=10))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err
        (br,) = [d for d in error_details(err) if d.DESCRIPTOR.name == "BadRequest"]
        assert br.field_violations[0].field == "payload", br
    err = await rpc_error(c.stub.SignalGraph(decide(gid, "maybe"), timeout=10))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "approve, reject, edit" in (
        err.details() or ""
    )
    await c.stub.SignalGraph(decide(gid, "edit", {"order_id": "A-200"}), timeout=10)
    st = await c.wait(gid)
    assert st.state == COMPLETED, st
    (sent,) = results_sent(fake, 1)
    assert "delayed" in text_of(sent) and "A-200" in text_of(sent)
    assert len(fake.requests) == 2


async def test_another_worker_resumes_the_agent_without_calling_the_model_again(
    redis_single: RedisServer, fake: FakeAnthropic, make_stack: MakeStack
) -> None:
    fake.script = [
        ToolUse({"value": 1}, "echo", id="toolu_1"),  # needs no approval: runs at once
        ToolUse({"order_id": "A-100"}, "order_status", id="toolu_2"),
        Text("Shipped."),
    ]
    first = await make_stack(redis_single, **settings(fake))
    gid = await first.client.submit(request([agent(["order_status", "echo"], ["order_status"])]))
    await waiting(first.client, gid)
    assert len(fake.requests) == 2
    await first.stop()
    second = await make_stack(redis_single, **settings(fake))
    c = second.client
    await c.stub.SignalGraph(decide(gid, "approve"), timeout=10)
    st = await c.wait(gid)
    assert st.state == COMPLETED, st
    # One more request: the turn after the approved call; turns 1 and 2 were not called again.
    assert len(fake.requests) == 3
    out = plain(node_status(st, "helper").output)
    assert out["turns"] == 3 and out["tool_calls"] == 2 and len(out["turn_usage"]) == 3
    # The resumed conversation is the one the model built: both earlier turns and results.
    msgs = fake.requests[2].body["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant", "user"]
    (sent,) = results_sent(fake, 2)
    assert "shipped" in text_of(sent)


async def test_cancel_ends_an_agent_waiting_for_approval(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    c = stack.client
    fake.script = [ToolUse({"order_id": "A-100"}, "order_status", id="toolu_1")]
    gid = await c.submit(request([agent(["order_status"], ["order_status"])]))
    await waiting(c, gid)
    await c.stub.CancelGraph(orchestrator_pb2.CancelGraphRequest(graph_id=gid), timeout=10)
    st = await c.wait(gid)
    assert st.state == CANCELLED
    assert node_status(st, "helper").state == execution_pb2.NODE_STATE_CANCELLED
    resp = await c.stub.ListWaits(orchestrator_pb2.ListWaitsRequest(), timeout=10)
    assert gid not in {w.graph_id for w in resp.waits}
    err = await rpc_error(c.stub.SignalGraph(decide(gid, "approve"), timeout=10))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert len(fake.requests) == 1


async def test_a_pattern_matching_none_of_the_tools_is_refused_at_submit(
    stack: InProcessStack,
) -> None:
    err = await rpc_error(
        stack.client.stub.SubmitGraph(request([agent(["echo"], ["echo", "http*"])]), timeout=10)
    )
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    (br,) = [d for d in error_details(err) if d.DESCRIPTOR.name == "BadRequest"]
    fields = [v.field for v in br.field_violations]
    assert fields == ["graph.nodes[0].agent.approval_required_tools[1]"], fields


async def test_each_call_is_its_own_wait_and_a_late_signal_for_an_earlier_one_loses(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    c = stack.client
    fake.script = [
        ToolUse({"order_id": "A-100"}, "order_status", id="toolu_1"),
        ToolUse({"order_id": "A-200"}, "order_status", id="toolu_2"),
        Text("One shipped, one delayed."),
    ]
    gid = await c.submit(request([agent(["order_status"], ["order_status"])]))
    await waiting(c, gid)
    await c.stub.SignalGraph(decide(gid, "approve", signal_id="first"), timeout=10)

    async def second_wait() -> bool:
        resp = await c.stub.ListWaits(orchestrator_pb2.ListWaitsRequest(), timeout=10)
        return any(w.graph_id == gid and plain(w.display)["id"] == "toolu_2" for w in resp.waits)

    await eventually(second_wait, 20.0)
    # A retry of the first signal is a replay; another decision for the first call lost.
    again = await c.stub.SignalGraph(decide(gid, "approve", signal_id="first"), timeout=10)
    assert again.signal_id == "first"
    late = await rpc_error(
        c.stub.SignalGraph(decide(gid, "reject", tool_call_id="toolu_1"), timeout=10)
    )
    assert late.code() == grpc.StatusCode.ABORTED, late
    early = await rpc_error(
        c.stub.SignalGraph(decide(gid, "approve", tool_call_id="toolu_9"), timeout=10)
    )
    assert early.code() == grpc.StatusCode.FAILED_PRECONDITION, early
    await c.stub.SignalGraph(decide(gid, "approve", tool_call_id="toolu_2"), timeout=10)
    st = await c.wait(gid)
    assert st.state == COMPLETED, st
    assert len(fake.requests) == 3
    waits = [e for e in await c.history(gid) if e.WhichOneof("payload") == "node_waiting"]
    assert len(waits) == 2


async def test_the_calls_of_one_turn_are_decided_one_at_a_time_then_run_together(
    stack: InProcessStack, fake: FakeAnthropic
) -> None:
    c = stack.client
    fake.script = [
        ToolUse(
            {"order_id": "A-100"},
            "order_status",
            id="toolu_1",
            more=[
                ("toolu_2", "echo", {"note": "no approval"}),
                ("toolu_3", "order_status", {"order_id": "A-200"}),
            ],
        ),
        Text("Done."),
    ]
    gid = await c.submit(request([agent(["order_status", "echo"], ["order_status"])]))

    async def waits_on(call_id: str) -> bool:
        resp = await c.stub.ListWaits(orchestrator_pb2.ListWaitsRequest(graph_id=gid), timeout=10)
        return [plain(w.display)["id"] for w in resp.waits] == [call_id]

    await eventually(lambda: waits_on("toolu_1"), 20.0)
    # Nothing of the turn ran yet: every call waits for the turn's decisions.
    events = await c.history(gid)
    assert kinds(events) == ["tool_call"] * 3 + ["node_waiting"]
    await c.stub.SignalGraph(decide(gid, "approve"), timeout=10)
    await eventually(lambda: waits_on("toolu_3"), 20.0)
    assert "tool_result" not in kinds(await c.history(gid))
    await c.stub.SignalGraph(decide(gid, "reject", comment="not this one"), timeout=10)
    st = await c.wait(gid)
    assert st.state == COMPLETED, st
    assert len(fake.requests) == 2
    sent = results_sent(fake, 1)
    assert [b["tool_use_id"] for b in sent] == ["toolu_1", "toolu_2", "toolu_3"]
    assert [bool(b.get("is_error")) for b in sent] == [False, False, True]
    assert "shipped" in text_of(sent[0]) and "not this one" in text_of(sent[2])
    assert kinds(await c.history(gid)) == (
        ["tool_call"] * 3 + ["node_waiting", "signal_received"] * 2 + ["tool_result"] * 3
    )
