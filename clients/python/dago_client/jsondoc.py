"""Proto JSON documents checked against their message type: every problem a field violation.

A graph written as JSON or YAML (a REST body, a dagoctl file) becomes a protobuf message by
the proto3 JSON mapping. ``json_format.ParseDict`` stops at the first problem and words it
protobuf's way: ``Message type "dago.v1.Node" has no field named "tol" at "Graph.nodes[1]".
Available Fields(except extensions): "['id', 'name', ..., 'maxIterations', ...]"`` (camelCase
names, an index, no suggestion; a bad enum value is not listed against the valid ones).
Envoy's REST transcoder says nothing at all: it drops unknown fields.

:func:`problems` walks a JSON-like document (what ``json.loads`` or ``yaml.safe_load``
return) against a message descriptor and reports **every** unknown field, unknown enum
value, oneof given twice and object-where-a-list-belongs with:

- the field path as dago names fields everywhere (``graph.nodes[1].tol``, the index of the
  list as written; map keys in brackets: ``graph.nodes[0].output[total]``);
- the node it is in, by id (``in node "b"``), for anything inside a node;
- the nearest valid name (``did you mean "tool"?``) and the valid snake_case names or enum
  values.

:func:`parse` is the one way a document becomes a message: :func:`problems` first, then
``ParseDict`` for what only it checks (a number where a string belongs, a bad duration),
its ``ParseError`` turned into a field violation too (:func:`from_parse_error`).

This module depends on protobuf alone. It belongs to the client distribution
(``dago-client``: its graph files, :mod:`dago_client.graphfile`), which the service's
distribution depends on for the ``dago.v1`` stubs anyway; the service's REST check
(``dago.api.restbody``) imports it from here: one rule, one copy, one owner.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

MAX_PROBLEMS = 50
"""Problems reported at most (the rest are counted in the last one)."""
_CLIP = 64
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Well-known types and what their JSON holds: anything (no names to check), or an object /
# a list of anything.
_FREE = {
    "google.protobuf.Value",
    "google.protobuf.Any",
    "google.protobuf.Duration",
    "google.protobuf.Timestamp",
    "google.protobuf.FieldMask",
    "google.protobuf.DoubleValue",
    "google.protobuf.FloatValue",
    "google.protobuf.Int64Value",
    "google.protobuf.UInt64Value",
    "google.protobuf.Int32Value",
    "google.protobuf.UInt32Value",
    "google.protobuf.BoolValue",
    "google.protobuf.StringValue",
    "google.protobuf.BytesValue",
}
_OBJECT = {"google.protobuf.Struct"}
_LIST = {"google.protobuf.ListValue"}


@dataclass(frozen=True)
class Problem:
    """One problem of a document: the field path and what is wrong."""

    field: str
    description: str


class DocumentError(ValueError):
    """A document that is not a valid message of its type; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"{first.field}: {first.description}{more}")
        self.problems = problems


def parse(doc: Any, message: M, root: str = "", *, ignore_enum_case: bool = False) -> M:
    """``doc`` parsed into ``message`` (and returned); raises :class:`DocumentError` listing
    every problem, with field paths under ``root`` (``""``: the message is the request)."""
    descriptor = cast(Descriptor, message.DESCRIPTOR)  # upb's type is the same at run time
    found = problems(doc, descriptor, root, ignore_enum_case=ignore_enum_case)
    if found:
        raise DocumentError(found)
    try:
        json_format.ParseDict(doc, message)
    except json_format.ParseError as e:
        raise DocumentError([from_parse_error(e, root)]) from None
    return message


def from_parse_error(error: json_format.ParseError, root: str = "") -> Problem:
    """A ``ParseError`` of ``ParseDict`` as a field violation: protobuf's ``at "Type.a.b"``
    made a field path under ``root``, the message without its ``Failed to parse`` framing."""
    text = str(error).strip()
    # "Failed to parse graph field: Failed to parse nodes field: <reason> at Type.a.b[0].c..."
    names: list[str] = []
    while (m := re.match(r"Failed to parse (\w+) field: ", text)) is not None:
        names.append(m.group(1))
        text = text[m.end() :]
    field = _join(root, ".".join(names)) if names else root
    m = re.search(r' at "?([\w.\[\]]+?)"?\.*$', text)
    if m is not None:
        text = text[: m.start()]
        _, _, rest = m.group(1).partition(".")  # without the message type's name
        if rest:
            field = _join(root, rest)  # with the indexes of lists
    return Problem(field or "(request)", text.rstrip(". ") or "not valid")


def problems(
    doc: Any, descriptor: Descriptor, root: str = "", *, ignore_enum_case: bool = False
) -> list[Problem]:
    """Every unknown field, unknown enum value, oneof given twice and value of the wrong
    JSON kind (an object, a list) in ``doc`` read as a ``descriptor`` message."""
    walker = _Walker(ignore_enum_case)
    walker.message(doc, descriptor, root, "")
    out = walker.found
    if len(out) > MAX_PROBLEMS:
        rest = len(out) - MAX_PROBLEMS + 1
        out = [*out[: MAX_PROBLEMS - 1], Problem(root or "(request)", f"{rest} more problems")]
    return out


class _Walker:
    def __init__(self, ignore_enum_case: bool) -> None:
        self.ignore_enum_case = ignore_enum_case
        self.found: list[Problem] = []

    def add(self, path: str, description: str) -> None:
        if len(self.found) <= MAX_PROBLEMS:
            self.found.append(Problem(path or "(request)", description))

    def message(self, doc: Any, d: Descriptor, path: str, where: str) -> None:
        name = d.full_name
        if doc is None or name in _FREE:
            return
        if name in _OBJECT:
            if not isinstance(doc, Mapping):
                self.add(path, f"expected an object{where}, not {_kind(doc)}")
            return
        if name in _LIST:
            if not isinstance(doc, list):
                self.add(path, f"expected a list{where}, not {_kind(doc)}")
            return
        if not isinstance(doc, Mapping):
            self.add(path, f"expected an object ({d.name}){where}, not {_kind(doc)}")
            return
        where = self._where(doc, d, where)
        by_json = {f.json_name: f for f in d.fields}
        oneofs: dict[str, str] = {}
        for key, value in doc.items():
            key = str(key)
            fd = d.fields_by_name.get(key) or by_json.get(key)
            at = _join(path, _segment(key))
            if fd is None:
                self.add(at, _unknown_field(key, d, where))
                continue
            if value is None:
                continue
            oneof = fd.containing_oneof
            if oneof is not None and not _synthetic(fd):
                if oneof.name in oneofs:
                    names = ", ".join(f.name for f in oneof.fields)
                    self.add(
                        path,
                        f'"{oneofs[oneof.name]}" and "{fd.name}" are both set{where}: only one '
                        f"of {names} may be ({oneof.name})",
                    )
                else:
                    oneofs[oneof.name] = fd.name
            self.field(value, fd, _join(path, fd.name), where)

    def field(self, value: Any, fd: FieldDescriptor, path: str, where: str) -> None:
        entry = fd.message_type
        if entry is not None and entry.GetOptions().map_entry:
            if not isinstance(value, Mapping):
                self.add(path, f"expected an object (a map){where}, not {_kind(value)}")
                return
            vfd = entry.fields_by_name["value"]
            for k, v in value.items():
                if v is not None:
                    self.single(v, vfd, f"{path}[{_clip(str(k))}]", where)
            return
        if fd.is_repeated:
            if not isinstance(value, list):
                self.add(path, f"expected a list{where}, not {_kind(value)}")
                return
            for i, v in enumerate(value):
                if v is not None:
                    self.single(v, fd, f"{path}[{i}]", where)
            return
        self.single(value, fd, path, where)

    def single(self, value: Any, fd: FieldDescriptor, path: str, where: str) -> None:
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            assert fd.message_type is not None
            self.message(value, fd.message_type, path, where)
        elif fd.type == FieldDescriptor.TYPE_ENUM:
            assert fd.enum_type is not None
            self.enum(value, fd.enum_type, fd.name, path, where)
        else:
            want = _scalar_problem(value, fd)
            if want is not None:
                self.add(path, f"expected {want}{where}, not {_kind(value)} {_show(value)}")

    def enum(self, value: Any, e: EnumDescriptor, field: str, path: str, where: str) -> None:
        if not isinstance(value, str):
            return  # numbers (and wrong kinds) are ParseDict's to judge
        names = [v.name for v in e.values]
        if value in names:
            return
        if self.ignore_enum_case and value.upper() in names:
            return
        valid = [n for n in names if not n.endswith("_UNSPECIFIED")] or names
        near = _nearest(value, names, _enum_prefix(names))
        hint = f'; did you mean "{near}"?' if near else ""
        self.add(
            path,
            f"unknown value {_quote(value)} for {field}{where}{hint} (valid: {', '.join(valid)})",
        )

    @staticmethod
    def _where(doc: Mapping[str, Any], d: Descriptor, where: str) -> str:
        """`` in node "a"`` for a message with an ``id`` given as a string (kept below it)."""
        ident = doc.get("id")
        if "id" in d.fields_by_name and isinstance(ident, str) and ident:
            return f" in {d.name.lower()} {_quote(ident)}"
        return where


def _unknown_field(key: str, d: Descriptor, where: str) -> str:
    names = [f.name for f in d.fields]
    near = _nearest(key, names, "")
    hint = f'; did you mean "{near}"?' if near else ""
    return f"unknown field {_quote(key)}{where}{hint} (valid: {', '.join(names)})"


_INTS = {
    FieldDescriptor.TYPE_INT32,
    FieldDescriptor.TYPE_INT64,
    FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64,
    FieldDescriptor.TYPE_SINT32,
    FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32,
    FieldDescriptor.TYPE_FIXED64,
    FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64,
}
_FLOATS = {FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT}


def _scalar_problem(value: Any, fd: FieldDescriptor) -> str | None:
    """What a scalar field needs when ``value`` is of the wrong JSON kind, else None (the
    value's range and format are ParseDict's to judge)."""
    t = fd.type
    if t in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_BYTES):
        return None if isinstance(value, str) else "a string"
    if t == FieldDescriptor.TYPE_BOOL:
        return None if isinstance(value, bool) else "true or false"
    if t in _INTS:
        ok = (isinstance(value, int | float) and not isinstance(value, bool)) or (
            isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()) is not None
        )
        return None if ok else "an integer"
    if t in _FLOATS:
        ok = (isinstance(value, int | float) and not isinstance(value, bool)) or isinstance(
            value, str
        )
        return None if ok else "a number"
    return None


def _show(value: Any) -> str:
    """A short JSON rendering of a scalar given where another kind belongs."""
    if isinstance(value, Mapping | list):
        return ""
    return f"({_clip(json.dumps(value, ensure_ascii=False, default=str))})"


def _nearest(word: str, names: list[str], prefix: str) -> str | None:
    """The valid name nearest ``word``: the same but for case, camelCase or the enum's
    prefix (``ANY`` -> ``JOIN_MODE_ANY``), else the closest spelling."""
    snake = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", word).lower()
    for cand in (word.upper(), snake, prefix + word.upper(), prefix + snake.upper()):
        if cand in names:
            return cand
    lowered = {n.lower(): n for n in names}
    tries = [snake, (prefix + snake).lower()] if prefix else [snake]
    for t in tries:
        close = difflib.get_close_matches(t, list(lowered), n=1, cutoff=0.6)
        if close:
            return lowered[close[0]]
    return None


def _enum_prefix(names: list[str]) -> str:
    """The prefix every value shares (``JOIN_MODE_``), from the zero value's name."""
    for n in names:
        if n.endswith("_UNSPECIFIED"):
            return n[: -len("UNSPECIFIED")]
    return ""


def _synthetic(fd: FieldDescriptor) -> bool:
    """A proto3 ``optional`` field's oneof (one member: never two set)."""
    oneof = fd.containing_oneof
    return oneof is not None and len(oneof.fields) == 1 and oneof.name.startswith("_")


def _segment(key: str) -> str:
    return key if _IDENT.fullmatch(key) else f"[{_quote(key)}]"


def _join(path: str, segment: str) -> str:
    if not path:
        return segment
    return f"{path}{segment}" if segment.startswith("[") else f"{path}.{segment}"


def _clip(text: str) -> str:
    return text if len(text) <= _CLIP else f"{text[:_CLIP]}… ({len(text)} characters)"


def _quote(text: str) -> str:
    return json.dumps(_clip(text), ensure_ascii=False)


def _kind(value: Any) -> str:
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    return type(value).__name__
