"""The diamond example end to end on both Redis kinds."""

from __future__ import annotations

import json

from google.protobuf import json_format

from dago.v1 import execution_pb2, orchestrator_pb2
from harness import ROOT, InProcessStack, kinds, stack_settings


async def test_diamond_example_runs_to_completion(redis_target, key_prefix) -> None:
    req = json_format.ParseDict(
        json.loads((ROOT / "examples/diamond.json").read_text()),
        orchestrator_pb2.SubmitGraphRequest(),
    )
    async with InProcessStack(stack_settings(redis_target.url, key_prefix)) as stack:
        gid, st = await stack.client.run(req)
        assert st.state == execution_pb2.GRAPH_STATE_COMPLETED
        result = await stack.client.result(gid)
        assert json_format.MessageToDict(result.output) == {
            "join": {"sides": ["left", "right"], "summary": "graphs: joined"}
        }
        events = await stack.client.watch(gid)
        assert kinds(events)[0] == "graph_submitted"
        assert kinds(events)[-1] == "graph_completed"
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
