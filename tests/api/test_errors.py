"""``dago.api.errors``: statuses stay small enough for every client to receive them."""

from __future__ import annotations

from google.rpc import error_details_pb2

from dago.api.errors import MAX_DETAIL_BYTES, invalid
from dago.engine.checker import Violation


def test_a_request_with_thousands_of_problems_gets_a_bounded_error() -> None:
    problems = [Violation(f"graph.nodes[{i}].inputs.v", "x" * 300) for i in range(5000)]
    err = invalid(problems)
    (detail,) = err.details
    assert isinstance(detail, error_details_pb2.BadRequest)
    assert detail.ByteSize() <= MAX_DETAIL_BYTES + 100
    listed = detail.field_violations
    assert listed[0].field == "graph.nodes[0].inputs.v"
    assert listed[-1].field == "" and listed[-1].description == (
        f"and {5000 - (len(listed) - 1)} more problem(s)"
    )
    assert err.message.startswith("graph.nodes[0].inputs.v: ") and "(and 4999 more)" in err.message
    assert len(err.message) < 700


def test_one_long_description_is_cut_not_dropped() -> None:
    err = invalid([Violation("graph.name", "y" * 100_000)])
    (detail,) = err.details
    (v,) = detail.field_violations
    assert v.field == "graph.name" and v.description.endswith("…")
    assert len(v.description) == 500
