"""Every example in examples/ is accepted and runs to completion with the result it promises."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import json_format

from dago.v1 import execution_pb2, orchestrator_pb2
from harness import ROOT, InProcessStack, eventually, stack_settings

EXPECTED: dict[str, dict[str, Any] | Callable[[dict[str, Any]], None]] = {
    "diamond": {"join": {"sides": ["left", "right"], "summary": "graphs: joined"}},
    "router": {"route": "urgent", "message": "ticket 'checkout returns 500' routed to urgent"},
    "loop": {"done": {"polls": 3}},
    "fanout": {"merge": {"parts": ["a", "b", "c"], "slept": 3}},
    # The offline provider's rule (dago.llm.offline): "[offline] <words in> words: <first 12>…".
    "research": {
        "summary": "[offline] 43 words: Summarise for a small platform team. Strengths: "
        "[offline] 23 words: List the…",
        "provider": "offline",
    },
    # No condition holds, so the (offline) model picks: offline picks the first route.
    "triage": {
        "route": "billing",
        "reply": "[offline] 25 words: Draft a reply to: I was charged twice for my March invoice,…",
    },
    "agent": lambda out: check_agent(out),
    # Rejected once (a revision), then edited: the edited text is published.
    "approval": {"published": "Wait nodes are here.", "approved_by": "anonymous", "edited": True},
    # The child run summarises; the parent publishes the child's result.
    "subgraph": {
        "headline": "Brief for a small platform team",
        "body": "[offline] 31 words: Summarise for a small platform team: Redis Streams keep "
        "an append-only log…",
    },
}

SIGNALS: dict[str, list[tuple[str, str, Any, str]]] = {
    "approval": [
        ("review", "reject", None, "shorter, please"),
        ("review", "edit", {"text": "Wait nodes are here."}, ""),
    ],
}
"""The signals an example with wait nodes gets, in order (node, decision, payload, comment),
each sent once its node waits in the next iteration."""


def check_agent(out: dict[str, Any]) -> None:
    """The offline agent calls the http tool once with the URL of its prompt, then answers
    from the result: the repository's JSON where there is network, else the error (which
    varies by machine), so only the shape of the answer is fixed."""
    assert out["provider"] == "offline" and out["tool_calls"] == 1
    assert out["report"].startswith("[offline] from 1 tool result(s): http: ")
    assert out["verdict"].startswith("[offline] ")


def load(name: str) -> orchestrator_pb2.SubmitGraphRequest:
    body = json.loads((ROOT / "examples" / f"{name}.json").read_text())
    return json_format.ParseDict(body, orchestrator_pb2.SubmitGraphRequest())


def test_every_example_has_an_expectation() -> None:
    assert sorted(p.stem for p in (ROOT / "examples").glob("*.json")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_example_runs(redis_single, key_prefix, name: str) -> None:
    async with InProcessStack(stack_settings(redis_single.url, key_prefix)) as stack:
        gid = await stack.client.submit(load(name))
        for n, (node, decision, payload, comment) in enumerate(SIGNALS.get(name, []), 1):
            await signal_when_waiting(stack, gid, node, n, decision, payload, comment)
        st = await stack.client.wait(gid)
        assert st.state == execution_pb2.GRAPH_STATE_COMPLETED, st
        result = await stack.client.result(gid)
        output = json_format.MessageToDict(result.output)
        expected = EXPECTED[name]
        if callable(expected):
            expected(output)
        else:
            assert output == expected


async def signal_when_waiting(
    stack: InProcessStack,
    gid: str,
    node: str,
    iteration: int,
    decision: str,
    payload: Any,
    comment: str,
) -> None:
    async def waits() -> bool:
        st = await stack.client.status(gid)
        n = next(n for n in st.nodes if n.node_id == node)
        return n.state == execution_pb2.NODE_STATE_WAITING and n.iteration == iteration

    await eventually(waits)
    req = orchestrator_pb2.SignalGraphRequest(
        graph_id=gid, node_id=node, decision=decision, comment=comment
    )
    if payload is not None:
        json_format.ParseDict(payload, req.payload)
    await stack.client.stub.SignalGraph(req, timeout=10)
