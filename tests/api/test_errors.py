"""``dago.api.errors``: statuses stay small enough for every client to receive them."""

from __future__ import annotations

from google.rpc import error_details_pb2

from dago.api.errors import MAX_DESCRIPTION_CHARS, MAX_DETAILS_BYTES, invalid
from dago.engine.checker import Violation


def test_a_request_with_thousands_of_problems_gets_a_bounded_error() -> None:
    problems = [Violation(f"graph.nodes[{i}].inputs.v", "x" * 300) for i in range(5000)]
    err = invalid(problems)
    (detail,) = err.details
    assert isinstance(detail, error_details_pb2.BadRequest)
    assert detail.ByteSize() <= MAX_DETAILS_BYTES
    listed = detail.field_violations
    assert 1 < len(listed) < 5000
    assert [v.field for v in listed] == [f"graph.nodes[{i}].inputs.v" for i in range(len(listed))]
    assert err.message.startswith("graph.nodes[0].inputs.v: ") and "(and 4999 more)" in err.message
    assert len(err.message) < 700


def test_one_long_description_is_cut_not_dropped() -> None:
    err = invalid([Violation("graph.name", "y" * 100_000)])
    (detail,) = err.details
    (v,) = detail.field_violations
    assert v.field == "graph.name"
    assert v.description.startswith("y" * MAX_DESCRIPTION_CHARS + "…")
    assert len(v.description) < MAX_DESCRIPTION_CHARS + 30
