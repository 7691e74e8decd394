"""Every example in examples/ is accepted and runs to completion with the result it promises."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import json_format

from dago.v1 import execution_pb2, orchestrator_pb2
from harness import ROOT, InProcessStack, stack_settings

EXPECTED: dict[str, dict[str, Any]] = {
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
}


def load(name: str) -> orchestrator_pb2.SubmitGraphRequest:
    body = json.loads((ROOT / "examples" / f"{name}.json").read_text())
    return json_format.ParseDict(body, orchestrator_pb2.SubmitGraphRequest())


def test_every_example_has_an_expectation() -> None:
    assert sorted(p.stem for p in (ROOT / "examples").glob("*.json")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_example_runs(redis_single, key_prefix, name: str) -> None:
    async with InProcessStack(stack_settings(redis_single.url, key_prefix)) as stack:
        gid, st = await stack.client.run(load(name))
        assert st.state == execution_pb2.GRAPH_STATE_COMPLETED, st
        result = await stack.client.result(gid)
        assert json_format.MessageToDict(result.output) == EXPECTED[name]
