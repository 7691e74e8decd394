"""JSON-like Python values to and from google.protobuf Struct/Value.

Struct stores every number as a double; graphs mean integers when they write
``3``, and CEL does not add an int to a double, so integral numbers that fit
a double exactly come back as ``int``.
"""

from __future__ import annotations

import json
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

from google.protobuf import json_format, struct_pb2

_EXACT = 2**53


def normalise(value: Any) -> Any:
    """``value`` with integral floats (|x| <= 2**53) turned into ints, recursively."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and abs(value) <= _EXACT else value
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


def to_plain(msg: struct_pb2.Struct | struct_pb2.Value) -> Any:
    """A Struct or Value as plain Python, numbers normalised."""
    return normalise(json_format.MessageToDict(msg))


def set_value(msg: struct_pb2.Value, value: Any) -> None:
    """Store a JSON-like Python value in a ``google.protobuf.Value``."""
    if value is None:
        msg.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        msg.bool_value = value
    elif isinstance(value, int | float):
        msg.number_value = value
    elif isinstance(value, str):
        msg.string_value = value
    elif isinstance(value, dict):
        msg.struct_value.SetInParent()  # so that {} is an empty object, not an unset value
        msg.struct_value.update(value)
    elif isinstance(value, list | tuple):
        msg.list_value.SetInParent()
        msg.list_value.extend(value)
    else:
        msg.string_value = str(value)


# The C encoder json.dumps(separators=(",", ":"), ensure_ascii=False, allow_nan=False) builds
# on every call, built once: the same text at a third of the cost (a worker encodes every
# node's input and output). Its circular-reference markers are emptied after a failed call,
# as a fresh encoder's would be.
_markers: dict[int, Any] = {}
_encode = (
    c_make_encoder(
        _markers, json.JSONEncoder().default, encode_basestring, None, ":", ",", False, False, False
    )
    if c_make_encoder is not None
    else None
)


class NotJson(ValueError):
    """A value JSON cannot hold: NaN or Infinity (JSON has neither)."""


def dumps(value: Any) -> str:
    """Compact JSON: ``json.dumps(value, separators=(",", ":"), ensure_ascii=False,
    allow_nan=False)``. NaN and ±Infinity raise :class:`NotJson`: written as ``NaN`` they are
    not JSON, and every reader of the value (REST, other languages' clients) would fail."""
    try:
        return _dumps(value)
    except ValueError as e:
        if "Out of range float" in str(e):
            raise NotJson("NaN and Infinity are not numbers JSON can hold") from None
        raise


def _dumps(value: Any) -> str:
    if _encode is None:  # an interpreter without the C accelerator
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    try:
        return "".join(_encode(value, 0))
    except BaseException:
        _markers.clear()
        raise
