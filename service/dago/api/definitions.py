"""The ``dago.v1.DefinitionService`` servicer: stored, versioned graph definitions
(docs/definitions.md), and the resolution of ``SubmitGraphRequest.definition``.

A definition is a hash in Redis (``DefinitionKeys.definition``, fields
``dago.store.schema.Definition``); versions are numbered by the ``publish`` function, which
also indexes the name, atomically. Versions are never changed or removed, so labels and
deprecations are plain writes of one field of the definition's small marks hash
(``DefinitionKeys.marks``) after checking that the version exists. A read takes the count
and the marks, then the records of the versions it shows only.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from dago.api import errors, tokens
from dago.api.auth import Authenticator
from dago.api.errors import guard
from dago.store.schema import Definition
from dago.store.store import Store
from dago.v1 import definitions_pb2, definitions_pb2_grpc, graph_pb2

Ctx = grpc.aio.ServicerContext[Any, Any]

NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
NAME_RULE = (
    "must be 1 to 63 characters of a-z, 0-9, '.', '_' and '-', starting with a letter or digit"
)
LATEST = "latest"
MAX_DESCRIPTION_CHARS = 1000
MAX_VERSION = 2**31 - 1

Validate = Callable[[graph_pb2.Graph], Awaitable[None]]
"""Checks a graph as SubmitGraph does (INVALID_ARGUMENT naming the fields)."""


def check_name(name: str, field: str = "name") -> None:
    """INVALID_ARGUMENT naming ``field`` unless ``name`` is a definition name."""
    if not NAME.fullmatch(name):
        raise errors.invalid_field(field, NAME_RULE)


def check_label(label: str, field: str = "label") -> None:
    """INVALID_ARGUMENT naming ``field`` unless ``label`` may be a label: a name that is
    not a number and not ``latest`` (those already select versions)."""
    check_name(label, field)
    if label.isdigit() or label == LATEST:
        raise errors.invalid_field(field, "must not be a number or 'latest'")


def parse_reference(reference: str, field: str = "definition") -> tuple[str, str]:
    """``name``, ``name@7``, ``name@prod``, ``name@latest`` -> (name, selector)."""
    name, _, selector = reference.partition("@")
    check_name(name, field)
    if "@" in reference and not selector:
        raise errors.invalid_field(field, "has nothing after '@' (a version, a label or latest)")
    return name, selector


def digest_of(graph: graph_pb2.Graph) -> str:
    """The content identity of a graph: hex SHA-256 of its deterministic serialization."""
    return hashlib.sha256(graph.SerializeToString(deterministic=True)).hexdigest()


class Definitions:
    """Reads of stored definitions, for the servicer and for submits by reference."""

    def __init__(self, store: Store) -> None:
        self._store = store

    async def fields(self, namespace: str, name: str) -> dict[str, bytes]:
        """The definition's count and marks; NOT_FOUND when it has no version."""
        fields = await self._store.definition(namespace, name)
        if not fields.get(Definition.COUNT):
            raise errors.not_found("definition", name)
        return fields

    async def with_versions(
        self, namespace: str, name: str, fields: dict[str, bytes], versions: list[int]
    ) -> dict[str, bytes]:
        """``fields`` with the records and times of ``versions`` added."""
        fields.update(await self._store.definition_versions(namespace, name, versions))
        return fields

    async def resolve(
        self, namespace: str, name: str, selector: str, field: str = "version"
    ) -> definitions_pb2.DefinitionVersion:
        """The version ``selector`` names (a number, a label, ``latest`` or ""), with its
        graph; NOT_FOUND for an unknown name, version or label."""
        fields = await self.fields(namespace, name)
        version = version_of(fields, name, selector, field)
        await self.with_versions(namespace, name, fields, [version])
        return view(namespace, name, version, fields)


def version_of(fields: dict[str, bytes], name: str, selector: str, field: str) -> int:
    """The version number ``selector`` names in a definition's hash."""
    count = int(fields[Definition.COUNT])
    if selector in ("", LATEST):
        return count
    if selector.isascii() and selector.isdigit():
        version = int(selector[:12])
        if not 1 <= version <= count or len(selector) > 12:
            raise errors.not_found("definition version", f"{name}@{selector}")
        return version
    if not NAME.fullmatch(selector):
        raise errors.invalid_field(field, "must be a version number, a label or 'latest'")
    raw = fields.get(Definition.LABEL + selector)
    if raw is None:
        raise errors.not_found("definition label", f"{name}@{selector}")
    return int(raw)


def view(
    namespace: str, name: str, version: int, fields: dict[str, bytes], graph: bool = True
) -> definitions_pb2.DefinitionVersion:
    """One version as the API shows it (``graph``: with its graph)."""
    out = definitions_pb2.DefinitionVersion.FromString(fields[f"{Definition.RECORD}{version}"])
    if not graph:
        out.ClearField("graph")
    out.version = version
    out.namespace = namespace
    out.create_time.FromMilliseconds(int(fields.get(f"{Definition.CREATED}{version}", b"0")))
    out.deprecated = bool(fields.get(f"{Definition.DEPRECATED}{version}"))
    out.labels.extend(
        sorted(
            k.removeprefix(Definition.LABEL)
            for k, v in fields.items()
            if k.startswith(Definition.LABEL) and int(v) == version
        )
    )
    return out


def _page_size(size: int) -> int:
    size = size or 50
    if not 1 <= size <= 1000:
        raise errors.invalid_field("page_size", "must be between 1 and 1000")
    return size


class DefinitionServicer(definitions_pb2_grpc.DefinitionServiceServicer):
    """Publishes, reads, labels and deprecates definitions of the caller's namespace."""

    def __init__(
        self, store: Store, auth: Authenticator, validate: Validate, quota: tuple[int, int]
    ) -> None:
        self._store = store
        self._auth = auth
        self._validate = validate
        self._quota = quota
        self.reads = Definitions(store)

    @guard
    async def PublishDefinition(
        self, request: definitions_pb2.PublishDefinitionRequest, context: Ctx
    ) -> definitions_pb2.PublishDefinitionResponse:
        """Validate as a submit, then store the next version (or find the latest, same)."""
        check_name(request.name)
        if len(request.description) > MAX_DESCRIPTION_CHARS:
            raise errors.invalid_field(
                "description", f"is longer than {MAX_DESCRIPTION_CHARS} characters"
            )
        if not request.HasField("graph"):
            raise errors.invalid_field("graph", "is required")
        await self._validate(request.graph)
        namespace = self._auth.current()
        digest = digest_of(request.graph)
        record = definitions_pb2.DefinitionVersion(
            name=request.name, description=request.description, graph=request.graph, digest=digest
        )
        outcome, version = await self._store.publish_definition(
            namespace,
            request.name,
            digest,
            record.SerializeToString(deterministic=True),
            self._quota,
        )
        if outcome == "names":
            raise errors.resource_exhausted(
                f"namespace:{namespace}:definitions",
                f"namespace {namespace!r} holds {version} definitions, its limit "
                "(DAGO_MAX_DEFINITIONS): publish a version of an existing name instead",
                version,
            )
        if outcome == "versions":
            raise errors.resource_exhausted(
                f"definition:{request.name}:versions",
                f"definition {request.name!r} has {version} versions, its limit "
                "(DAGO_MAX_DEFINITION_VERSIONS): publish under a new name",
                version,
            )
        created = outcome == "created"
        fields = await self.reads.fields(namespace, request.name)
        await self.reads.with_versions(namespace, request.name, fields, [version])
        return definitions_pb2.PublishDefinitionResponse(
            definition=view(namespace, request.name, version, fields), created=created
        )

    @guard
    async def GetDefinition(
        self, request: definitions_pb2.GetDefinitionRequest, context: Ctx
    ) -> definitions_pb2.GetDefinitionResponse:
        """One version, by number, label or latest."""
        check_name(request.name)
        found = await self.reads.resolve(self._auth.current(), request.name, request.version)
        return definitions_pb2.GetDefinitionResponse(definition=found)

    @guard
    async def ListDefinitions(
        self, request: definitions_pb2.ListDefinitionsRequest, context: Ctx
    ) -> definitions_pb2.ListDefinitionsResponse:
        """The namespace's definitions by name, a page at a time."""
        size = _page_size(request.page_size)
        after = ""
        if request.page_token:
            (after,) = tokens.decode(request.page_token, "defs", 1)
        namespace = self._auth.current()
        names = await self._store.definition_names(namespace, after, size + 1)
        out = definitions_pb2.ListDefinitionsResponse()
        for name in names[:size]:
            fields = await self._store.definition(namespace, name)
            if not fields.get(Definition.COUNT):
                continue
            latest = int(fields[Definition.COUNT])
            await self.reads.with_versions(namespace, name, fields, [latest])
            record = definitions_pb2.DefinitionVersion.FromString(
                fields[f"{Definition.RECORD}{latest}"]
            )
            summary = out.definitions.add(
                name=name, latest_version=latest, description=record.description
            )
            summary.update_time.FromMilliseconds(int(fields[f"{Definition.CREATED}{latest}"]))
            for k, v in fields.items():
                if k.startswith(Definition.LABEL):
                    summary.labels[k.removeprefix(Definition.LABEL)] = int(v)
        if len(names) > size:
            out.next_page_token = tokens.encode("defs", names[size - 1])
        return out

    @guard
    async def ListDefinitionVersions(
        self, request: definitions_pb2.ListDefinitionVersionsRequest, context: Ctx
    ) -> definitions_pb2.ListDefinitionVersionsResponse:
        """Versions newest first, without their graphs."""
        check_name(request.name)
        size = _page_size(request.page_size)
        namespace = self._auth.current()
        fields = await self.reads.fields(namespace, request.name)
        top = int(fields[Definition.COUNT])
        if request.page_token:
            (part,) = tokens.decode(request.page_token, "defversions", 1)
            top = min(top, tokens.decode_int(part, 1, MAX_VERSION))
        out = definitions_pb2.ListDefinitionVersionsResponse()
        low = max(0, top - size)
        await self.reads.with_versions(namespace, request.name, fields, list(range(top, low, -1)))
        for version in range(top, low, -1):
            out.versions.append(view(namespace, request.name, version, fields, graph=False))
        if low > 0:
            out.next_page_token = tokens.encode("defversions", low)
        return out

    @guard
    async def SetDefinitionLabel(
        self, request: definitions_pb2.SetDefinitionLabelRequest, context: Ctx
    ) -> definitions_pb2.SetDefinitionLabelResponse:
        """Point a label at an existing version."""
        check_name(request.name)
        check_label(request.label)
        namespace = self._auth.current()
        fields = await self.reads.fields(namespace, request.name)
        if not 1 <= request.version <= int(fields[Definition.COUNT]):
            if request.version <= 0:
                raise errors.invalid_field("version", "must be a version number (1, 2, ...)")
            raise errors.not_found("definition version", f"{request.name}@{request.version}")
        key = Definition.LABEL + request.label
        await self._store.mark_definition(namespace, request.name, {key: request.version})
        fields[key] = str(request.version).encode()
        await self.reads.with_versions(namespace, request.name, fields, [request.version])
        return definitions_pb2.SetDefinitionLabelResponse(
            definition=view(namespace, request.name, request.version, fields)
        )

    @guard
    async def DeleteDefinitionLabel(
        self, request: definitions_pb2.DeleteDefinitionLabelRequest, context: Ctx
    ) -> definitions_pb2.DeleteDefinitionLabelResponse:
        """Remove a label; NOT_FOUND when the definition or the label does not exist."""
        check_name(request.name)
        check_label(request.label)
        namespace = self._auth.current()
        await self.reads.fields(namespace, request.name)
        was = await self._store.unmark_definition(
            namespace, request.name, Definition.LABEL + request.label
        )
        if was is None:
            raise errors.not_found("definition label", f"{request.name}@{request.label}")
        return definitions_pb2.DeleteDefinitionLabelResponse(version=int(was))

    @guard
    async def DeprecateDefinitionVersion(
        self, request: definitions_pb2.DeprecateDefinitionVersionRequest, context: Ctx
    ) -> definitions_pb2.DeprecateDefinitionVersionResponse:
        """Mark a version deprecated (again: no change)."""
        check_name(request.name)
        if not request.version:
            raise errors.invalid_field("version", "is required")
        namespace = self._auth.current()
        fields = await self.reads.fields(namespace, request.name)
        version = version_of(fields, request.name, request.version, "version")
        key = f"{Definition.DEPRECATED}{version}"
        await self._store.mark_definition(namespace, request.name, {key: 1})
        fields[key] = b"1"
        await self.reads.with_versions(namespace, request.name, fields, [version])
        return definitions_pb2.DeprecateDefinitionVersionResponse(
            definition=view(namespace, request.name, version, fields)
        )
