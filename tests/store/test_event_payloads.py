"""The stored event codec's table of payloads (dago.store.events.PAYLOADS) against the proto."""

from __future__ import annotations

from dago.store import events
from dago.v1 import execution_pb2


def test_every_payload_kind_has_a_row_and_every_row_names_real_fields() -> None:
    """A kind the proto adds without a row, or a row naming a field its payload lacks,
    fails here rather than when such an event is first read."""
    oneof = execution_pb2.Event.DESCRIPTOR.oneofs_by_name["payload"]
    kinds = {f.name for f in oneof.fields} - {"heartbeat"}  # made by the API, never stored
    assert set(events.PAYLOADS) == kinds
    for f in oneof.fields:
        for field, _key, _how in events.PAYLOADS.get(f.name, ()):
            assert field in f.message_type.fields_by_name, (f.name, field)


def test_a_payload_is_set_from_an_empty_detail() -> None:
    for kind in events.PAYLOADS:
        ev = execution_pb2.Event(graph_id="3-x")
        events.fill_payload(ev, kind, {})
        assert ev.WhichOneof("payload") == kind
