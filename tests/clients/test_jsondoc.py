"""Proto JSON documents checked against their message type (``dago_client.jsondoc``, the one
rule of the client's graph files and the service's REST check): every problem of a
document is a field violation with its path, the node's id, the nearest valid name and the
valid ones."""

from __future__ import annotations

from typing import Any

import pytest

from dago.v1 import orchestrator_pb2
from dago_client import jsondoc, load_request
from dago_client.graphfile import GraphFileError


def problems(doc: Any, **kw: Any) -> dict[str, str]:
    found = jsondoc.problems(doc, orchestrator_pb2.SubmitGraphRequest.DESCRIPTOR, **kw)
    return {p.field: p.description for p in found}


def test_every_unknown_field_and_enum_value_with_the_node_and_the_nearest_name() -> None:
    doc = {
        "graph": {
            "nodes": [
                {"id": "a", "tool": {"name": "echo"}, "retyr": {"max_attempts": 3}},
                {"id": "b", "tol": {"name": "echo"}, "join": "ANY"},
                {"id": "c", "tool": {"name": "echo"}, "llm": {}},
            ],
            "edges": [{"from": "a", "to": "b", "lable": "x"}],
        },
        "inputs": {"free": {"keys": ["are", "fine"]}},  # a Struct: any keys
    }
    got = problems(doc)
    assert set(got) == {
        "graph.nodes[0].retyr",
        "graph.nodes[1].tol",
        "graph.nodes[1].join",
        "graph.nodes[2]",
        "graph.edges[0].lable",
    }, got
    assert got["graph.nodes[0].retyr"].startswith(
        'unknown field "retyr" in node "a"; did you mean "retry"? (valid: id, name, description'
    )
    assert "max_iterations" in got["graph.nodes[0].retyr"]  # snake_case, not maxIterations
    assert got["graph.nodes[1].join"] == (
        'unknown value "ANY" for join in node "b"; did you mean "JOIN_MODE_ANY"? '
        "(valid: JOIN_MODE_ALL, JOIN_MODE_ANY)"
    )
    assert got["graph.nodes[2]"].startswith('"tool" and "llm" are both set in node "c"')
    assert got["graph.edges[0].lable"].startswith('unknown field "lable"; did you mean "label"?')


def test_camel_case_names_are_accepted_and_case_is_forgiven_only_when_asked() -> None:
    doc = {"requestId": "r", "graph": {"nodes": [{"id": "a", "maxIterations": 2, "join": "any"}]}}
    assert set(problems(doc)) == {"graph.nodes[0].join"}
    lower = {"graph": {"nodes": [{"id": "a", "join": "join_mode_any"}]}}
    assert set(problems(lower)) == {"graph.nodes[0].join"}
    assert problems(lower, ignore_enum_case=True) == {}


def test_wrong_kinds_and_what_only_protobuf_checks_are_field_violations_too() -> None:
    got = problems({"graph": {"nodes": {"a": {}}, "name": 3}})
    assert got == {
        "graph.nodes": "expected a list, not an object",
        "graph.name": "expected a string, not a number (3)",
    }
    with pytest.raises(jsondoc.DocumentError) as info:
        jsondoc.parse(
            {"graph": {"nodes": [{"id": "a", "attempt_timeout": "soon"}]}},
            orchestrator_pb2.SubmitGraphRequest(),
        )
    [only] = info.value.problems
    assert only.field == "graph.nodes[0].attempt_timeout", only
    assert "soon" in only.description and "Failed to parse" not in only.description


def test_load_request_lists_every_problem(tmp_path: Any) -> None:
    f = tmp_path / "g.json"
    f.write_text('{"graph": {"nodes": [{"id": "a", "tol": {}, "join": "ANY"}]}}')
    with pytest.raises(GraphFileError) as info:
        load_request(f)
    text = str(info.value)
    assert "2 problems:" in text, text
    assert 'graph.nodes[0].tol: unknown field "tol" in node "a"; did you mean "tool"?' in text
    assert 'graph.nodes[0].join: unknown value "ANY"' in text
