"""The model each node of an archived run is counted under (dago_run_usage.model)."""

from __future__ import annotations

import dataclasses

from google.protobuf import json_format, struct_pb2

from dago.config import Settings
from dago.history.write import FinishedRun, node_models
from dago.llm import models
from dago.v1 import execution_pb2, graph_pb2, orchestrator_pb2


def run_of(nodes: list[dict[str, object]], events: list[dict[str, object]]) -> FinishedRun:
    return FinishedRun(
        graph_id="0-x",
        namespace="default",
        graph=json_format.ParseDict({"nodes": nodes}, graph_pb2.Graph()),
        inputs=struct_pb2.Struct(),
        status=execution_pb2.GraphStatus(),
        result=orchestrator_pb2.GetGraphResultResponse(),
        events=[json_format.ParseDict(e, execution_pb2.Event()) for e in events],
    )


def test_the_model_called_else_the_one_the_node_would_have_called() -> None:
    run = run_of(
        [
            {"id": "called", "llm": {"prompt": "p", "model": "asked-for"}},
            {"id": "asked", "llm": {"prompt": "p", "provider": "anthropic", "model": "m-1"}},
            {"id": "default", "agent": {"llm": {"prompt": "p", "provider": "anthropic"}}},
            {"id": "local", "llm": {"prompt": "p", "provider": "offline", "model": "m-2"}},
            {"id": "tool", "tool": {"name": "echo"}},
        ],
        [
            {"seq": 1, "nodeId": "called", "usage": {"model": "first"}},
            {"seq": 2, "nodeId": "called", "usage": {"model": "claude-haiku-4-5"}},
        ],
    )
    settings = Settings()
    assert node_models(run, settings) == {
        "called": "claude-haiku-4-5",
        "asked": "m-1",
        "default": models.DEFAULT_MODEL,
        "local": "offline",
        "tool": "",
    }
    chosen = dataclasses.replace(settings, llm_model="claude-opus-5")
    assert node_models(run, chosen)["default"] == "claude-opus-5"
