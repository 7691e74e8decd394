"""A finished run's result: its ``Graph.output`` mapping over its node outputs, else its sink
nodes' outputs. One rule, read by GetGraphResult (``dago.api.views``) and by a subgraph node
completing with its child run's result (``dago.nodes.subgraph``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dago.engine.cel import EvalError
from dago.engine.model import CompiledGraph
from dago.store.values import NotJson, dumps


def run_result(
    compiled: CompiledGraph, graph_id: str, inputs: Any, outputs: Mapping[str, Any]
) -> dict[str, Any]:
    """The result of run ``graph_id`` of ``compiled`` with ``inputs``, from the outputs of its
    completed nodes."""
    if not compiled.output:
        return {n: outputs[n] for n in compiled.sinks if n in outputs}
    data = {
        "inputs": inputs,
        "nodes": {n: {"output": v} for n, v in outputs.items()},
        "graph": {"id": graph_id, "name": compiled.proto.name},
    }
    mapped: dict[str, Any] = {}
    for name, expr in compiled.output.items():
        try:
            mapped[name] = expr.evaluate(data)
            dumps(mapped[name])  # NaN or Infinity (1.0/0.0) would break every JSON reader
        except (EvalError, NotJson):
            # A node the mapping reads was skipped or failed, or the value is not a number
            # JSON can hold: the entry is null.
            mapped[name] = None
    return mapped
