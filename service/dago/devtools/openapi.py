"""``python -m dago.devtools.openapi``: gen/openapi.json, the REST API as an OpenAPI 3 document.

Made from the same descriptor set and comments as docs/api.md (gen/dago.binpb, walked by
:mod:`dago.devtools.docsgen`): one path per ``google.api.http`` route of ``dago.v1``, its
path and query parameters, its body, its response (the event routes as Server-Sent Events,
NDJSON or one JSON array, as Envoy frames them) and the error shape, ``google.rpc.Status``
with its details. The schemas follow the proto JSON mapping as the transcoder prints it
(docs/rest.md): snake_case field names, 64-bit integers as strings, enums by name,
Timestamp and Duration as strings, Struct and Value as any JSON. ``make gen`` writes it,
``make gen-check`` fails when the committed file differs, and Envoy serves it on
``/api/v1/openapi.json`` (dago.devtools.edge).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from dago.devtools.docsgen import (
    DESCRIPTOR,
    ENUM,
    FIELD,
    MESSAGE,
    METHOD,
    NESTED,
    NESTED_ENUM,
    PACKAGE,
    ROOT,
    SERVICE,
    VALUE,
    ProtoDoc,
)

OUT = ROOT / "gen" / "openapi.json"

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS: dict[int, dict[str, Any]] = {
    _F.TYPE_DOUBLE: {"type": "number", "format": "double"},
    _F.TYPE_FLOAT: {"type": "number", "format": "float"},
    _F.TYPE_INT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    _F.TYPE_SINT64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    _F.TYPE_SFIXED64: {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"},
    _F.TYPE_UINT64: {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
    _F.TYPE_FIXED64: {"type": "string", "format": "uint64", "pattern": "^[0-9]+$"},
    _F.TYPE_INT32: {"type": "integer", "format": "int32"},
    _F.TYPE_SINT32: {"type": "integer", "format": "int32"},
    _F.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    _F.TYPE_UINT32: {"type": "integer", "format": "int64", "minimum": 0},
    _F.TYPE_FIXED32: {"type": "integer", "format": "int64", "minimum": 0},
    _F.TYPE_BOOL: {"type": "boolean"},
    _F.TYPE_STRING: {"type": "string"},
    _F.TYPE_BYTES: {"type": "string", "format": "byte"},
}
# Well-known types: their JSON form, not their fields.
_WELL_KNOWN: dict[str, dict[str, Any]] = {
    "google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    "google.protobuf.Duration": {"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?s$"},
    "google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    "google.protobuf.Value": {},
    "google.protobuf.ListValue": {"type": "array", "items": {}},
    "google.protobuf.Any": {
        "type": "object",
        "properties": {"@type": {"type": "string"}},
        "required": ["@type"],
        "additionalProperties": True,
    },
}
# Message fields a query parameter can set (the transcoder reads their JSON string form).
_QUERY_MESSAGES = {".google.protobuf.Timestamp", ".google.protobuf.Duration"}


def _query_type(f: descriptor_pb2.FieldDescriptorProto) -> bool:
    """Whether field ``f`` can be a query parameter: scalars, enums, and timestamps."""
    return f.type != _F.TYPE_MESSAGE or f.type_name in _QUERY_MESSAGES


def _query_name(f: descriptor_pb2.FieldDescriptorProto) -> str:
    """The query parameter of field ``f``: its name, or the json_name the proto gave it
    (GetUsageSummaryRequest's ``from``/``to``; the transcoder takes both, the docs one)."""
    head, *rest = f.name.split("_")
    default = head + "".join(w.capitalize() for w in rest)
    return f.json_name if f.json_name and f.json_name != default else f.name


# The HTTP statuses Envoy gives the gRPC codes (convert_grpc_status; docs/rest.md).
ERROR_STATUSES = {
    "400": "INVALID_ARGUMENT, FAILED_PRECONDITION or OUT_OF_RANGE",
    "404": "NOT_FOUND",
    "409": "ALREADY_EXISTS or ABORTED",
    "413": "the request body is larger than the edge accepts",
    "429": "RESOURCE_EXHAUSTED (or the edge's per-client rate limit)",
    "499": "CANCELLED",
    "503": "UNAVAILABLE",
    "504": "DEADLINE_EXCEEDED",
}
# The google.rpc details the API sends (dago.api.errors), as the Status schema lists them.
ERROR_DETAILS = (
    "ErrorInfo",
    "BadRequest",
    "PreconditionFailure",
    "ResourceInfo",
    "QuotaFailure",
    "RetryInfo",
)
_TYPE_URL = "type.googleapis.com/google.rpc."


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


class _OpenApi:
    """The document of the descriptor set, its schemas collected as the routes reach them."""

    def __init__(self, fds: descriptor_pb2.FileDescriptorSet) -> None:
        self.doc = ProtoDoc(fds)
        self.messages: dict[str, tuple[str, list[int], descriptor_pb2.DescriptorProto]] = {}
        self.enums: dict[str, tuple[str, list[int], descriptor_pb2.EnumDescriptorProto]] = {}
        for f in fds.file:
            for mi, m in enumerate(f.message_type):
                self._index(f.name, [MESSAGE, mi], f"{f.package}.{m.name}", m)
            for ei, e in enumerate(f.enum_type):
                self.enums[f"{f.package}.{e.name}"] = (f.name, [ENUM, ei], e)
        self.schemas: dict[str, dict[str, Any]] = {}

    def _index(
        self, file: str, path: list[int], name: str, m: descriptor_pb2.DescriptorProto
    ) -> None:
        self.messages[name] = (file, path, m)
        for ni, n in enumerate(m.nested_type):
            self._index(file, [*path, NESTED, ni], f"{name}.{n.name}", n)
        for ei, e in enumerate(m.enum_type):
            self.enums[f"{name}.{e.name}"] = (file, [*path, NESTED_ENUM, ei], e)

    def text(self, file: str, path: Sequence[int]) -> str:
        return self.doc.comments.get((file, tuple(path)), "")

    @staticmethod
    def schema_name(full: str) -> str:
        return full.removeprefix(PACKAGE + ".")

    def type_schema(self, full: str) -> dict[str, Any]:
        """A reference to the schema of message or enum ``full``, added on first use."""
        if full in _WELL_KNOWN:
            return dict(_WELL_KNOWN[full])
        name = self.schema_name(full)
        if name not in self.schemas:
            self.schemas[name] = {}  # reserved first: messages may refer to themselves
            self.schemas[name] = (
                self.enum_schema(full) if full in self.enums else self.message_schema(full)
            )
        return _ref(name)

    def enum_schema(self, full: str) -> dict[str, Any]:
        file, path, e = self.enums[full]
        lines = [self.text(file, path), ""]
        for vi, v in enumerate(e.value):
            lines.append(f"- `{v.name}`: {self.text(file, [*path, VALUE, vi])}".rstrip())
        return {
            "type": "string",
            "enum": [v.name for v in e.value],
            "description": "\n".join(lines).strip(),
        }

    def field_schema(self, f: descriptor_pb2.FieldDescriptorProto) -> dict[str, Any]:
        """The JSON schema of field ``f`` (maps and repeated fields included)."""
        target = f.type_name.lstrip(".")
        if target in self.messages and self.messages[target][2].options.map_entry:
            value = self.messages[target][2].field[1]
            return {"type": "object", "additionalProperties": self.field_schema(value)}
        if f.type in (_F.TYPE_MESSAGE, _F.TYPE_ENUM):
            base = self.type_schema(target)
        else:
            base = dict(_SCALARS[f.type])
        if f.label == _F.LABEL_REPEATED:
            return {"type": "array", "items": base}
        return base

    def message_schema(self, full: str) -> dict[str, Any]:
        file, path, m = self.messages[full]
        props: dict[str, Any] = {}
        for fi, f in enumerate(m.field):
            s = self.field_schema(f)
            text = self.text(file, [*path, FIELD, fi])
            if f.HasField("oneof_index") and not f.proto3_optional:
                text = f"(oneof `{m.oneof_decl[f.oneof_index].name}`) {text}".strip()
            if text:
                # Siblings of $ref are ignored in 3.0: wrap the reference.
                s = {"allOf": [s]} if "$ref" in s else s
                s = {**s, "description": text}
            props[f.name] = s
        out: dict[str, Any] = {"type": "object", "properties": props}
        if self.text(file, path):
            out["description"] = self.text(file, path)
        return out

    def request_schema(self, full: str, skip: set[str]) -> dict[str, Any]:
        """The body of a ``body: "*"`` route: the request message without its path fields;
        fields the message does not have are refused (docs/rest.md, "Unknown fields")."""
        whole = self.message_schema(full)
        props = {k: v for k, v in whole["properties"].items() if k not in skip}
        return {**whole, "properties": props, "additionalProperties": False}

    def parameters(
        self, full: str, template: str, with_query: bool
    ) -> tuple[list[dict[str, Any]], set[str]]:
        """The path parameters of ``template`` and, for a route without a body, the scalar
        fields of the request as query parameters."""
        file, path, m = self.messages[full]
        in_path = {seg[1:-1] for seg in template.replace(":", "/").split("/") if seg[:1] == "{"}
        out: list[dict[str, Any]] = []
        for fi, f in enumerate(m.field):
            where = "path" if f.name in in_path else "query"
            if where == "query" and (not with_query or not _query_type(f)):
                continue
            p: dict[str, Any] = {
                "name": _query_name(f) if where == "query" else f.name,
                "in": where,
                "required": where == "path",
                "schema": self.field_schema(f),
            }
            if where == "path":
                # A segment: not empty, no slash (Envoy matches [^/]+).
                p["schema"] = {"type": "string", "pattern": "^[^/]+$", "minLength": 1}
            if f.label == _F.LABEL_REPEATED:
                p["explode"] = True
            text = self.text(file, [*path, FIELD, fi])
            if text:
                p["description"] = text
            out.append(p)
        return out, in_path

    def operation(
        self,
        file: descriptor_pb2.FileDescriptorProto,
        si: int,
        mi: int,
        method: descriptor_pb2.MethodDescriptorProto,
        rule: http_pb2.HttpRule,
        template: str,
    ) -> dict[str, Any]:
        service = file.service[si]
        request = method.input_type.lstrip(".")
        response = method.output_type.lstrip(".")
        params, in_path = self.parameters(request, template, with_query=not rule.body)
        op: dict[str, Any] = {
            "operationId": method.name,
            "tags": [service.name],
            "summary": f"{service.name}.{method.name}",
            "description": self.text(file.name, [SERVICE, si, METHOD, mi]),
        }
        if params:
            op["parameters"] = params
        if rule.body:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": self.request_schema(request, in_path)}},
            }
        item = self.type_schema(response)
        if method.server_streaming:
            content = {
                "text/event-stream": {
                    "schema": {"type": "string"},
                    "x-dago-event-schema": item,
                },
                "application/x-ndjson": {
                    "schema": {"type": "string"},
                    "x-dago-event-schema": item,
                },
                "application/json": {"schema": {"type": "array", "items": item}},
            }
            ok = (
                "A stream of events, framed by the Accept header: Server-Sent Events "
                "(`text/event-stream`, an `id:` line per event, resumable by Last-Event-ID), "
                "newline-delimited JSON (`application/x-ndjson`) or one streamed JSON array "
                "(otherwise). Each event is a JSON object as `x-dago-event-schema` says."
            )
        else:
            content = {"application/json": {"schema": item}}
            ok = "OK"
        responses: dict[str, Any] = {"200": {"description": ok, "content": content}}
        for status in ERROR_STATUSES:
            responses[status] = {"$ref": f"#/components/responses/Error{status}"}
        responses["default"] = {"$ref": "#/components/responses/Error"}
        op["responses"] = responses
        return op

    def render(self) -> dict[str, Any]:
        paths: dict[str, dict[str, Any]] = {}
        for f in self.doc.fds.file:
            if f.package != PACKAGE:
                continue
            for si, svc in enumerate(f.service):
                for mi, method in enumerate(svc.method):
                    rule: http_pb2.HttpRule = method.options.Extensions[annotations_pb2.http]  # type: ignore[index]
                    for r in [rule, *rule.additional_bindings]:
                        verb = r.WhichOneof("pattern")
                        if not verb or verb == "custom":
                            continue
                        template = getattr(r, verb)
                        paths.setdefault(template, {})[verb] = self.operation(
                            f, si, mi, method, r, template
                        )
        self.type_schema("google.rpc.Status")
        details = self.schemas["google.rpc.Status"]["properties"]["details"]
        details["items"] = {
            "anyOf": [
                *(
                    {
                        "allOf": [
                            self.type_schema(f"google.rpc.{d}"),
                            {
                                "type": "object",
                                "properties": {
                                    "@type": {"type": "string", "enum": [_TYPE_URL + d]}
                                },
                                "required": ["@type"],
                            },
                        ]
                    }
                    for d in ERROR_DETAILS
                ),
                _WELL_KNOWN["google.protobuf.Any"],
            ]
        }
        details["description"] = (
            "The error's details, each with its `@type`: dago sends "
            + ", ".join(f"`google.rpc.{d}`" for d in ERROR_DETAILS)
            + " (docs/rest.md, Errors)."
        )
        responses: dict[str, Any] = {
            "Error": {
                "description": "Any other error: a google.rpc.Status with its details.",
                "content": {"application/json": {"schema": _ref("google.rpc.Status")}},
            }
        }
        for status, codes in ERROR_STATUSES.items():
            responses[f"Error{status}"] = {
                "description": f"{codes}: a google.rpc.Status with its details.",
                "content": {"application/json": {"schema": _ref("google.rpc.Status")}},
            }
        return {
            "openapi": "3.0.3",
            "info": {
                "title": "dago REST API",
                "version": "v1",
                "description": (
                    f"Package `{PACKAGE}` over REST+JSON, transcoded by Envoy from the gRPC API "
                    "(docs/rest.md). Generated by `make gen` (dago.devtools.openapi) from the "
                    "proto's google.api.http annotations and comments: do not edit. Errors are "
                    'google.rpc.Status JSON, `{code, message, details: [{"@type": ...}]}`.'
                ),
            },
            "servers": [{"url": "/"}],
            "tags": [
                {"name": s.name, "description": self.text(f.name, [SERVICE, si])}
                for f in self.doc.fds.file
                if f.package == PACKAGE
                for si, s in enumerate(f.service)
            ],
            "paths": dict(sorted(paths.items())),
            "components": {
                "schemas": dict(sorted(self.schemas.items())),
                "responses": responses,
            },
        }


def render(descriptor: Path = DESCRIPTOR) -> str:
    """The OpenAPI document (JSON text) of the descriptor set at ``descriptor``."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor.read_bytes())
    return json.dumps(_OpenApi(fds).render(), indent=1, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``--out FILE`` writes the document; ``--check FILE`` fails when FILE differs."""
    p = argparse.ArgumentParser(prog="python -m dago.devtools.openapi", description=__doc__)
    p.add_argument("--descriptor", type=Path, default=DESCRIPTOR)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--out", type=Path, help="write here (default: stdout)")
    g.add_argument("--check", type=Path, help="exit 1 when this file is not up to date")
    args = p.parse_args(argv)
    text = render(args.descriptor)
    if args.check:
        if not args.check.exists() or args.check.read_text() != text:
            print(f"{args.check} is out of date with the proto: run `make gen`", file=sys.stderr)
            return 1
        print(f"{args.check} up to date")
        return 0
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
