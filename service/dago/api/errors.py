"""API errors and their mapping to google.rpc.Status, in one place.

Servicer code raises ``ApiError`` (built with the helpers below); ``guard``
and ``guard_stream`` wrap every RPC and turn it into a status with details.
Anything else is logged with its traceback and answered with a generic
INTERNAL (no exception text reaches clients); a lost Redis connection, or a history
database (PostgreSQL) that does not answer, is UNAVAILABLE, which clients may retry.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import google.rpc.error_details_pb2 as error_details_pb2
import google.rpc.status_pb2 as status_pb2
import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from grpc_status import rpc_status
from psycopg import OperationalError as PostgresUnavailable
from psycopg.errors import UndefinedTable as PostgresNoSchema
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dago.engine.checker import Violation
from dago.engine.fields import clip

log = logging.getLogger("dago.api")

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class ApiError(Exception):
    """An error answered to the client as a google.rpc.Status."""

    def __init__(
        self, code: grpc.StatusCode, message: str, details: Sequence[Message] = ()
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = list(details)

    def status(self) -> grpc.Status:
        """The grpc status carrying google.rpc.Status with packed details."""
        packed = []
        for d in self.details:
            a = any_pb2.Any()
            a.Pack(d)
            packed.append(a)
        proto = status_pb2.Status(code=self.code.value[0], message=self.message, details=packed)
        return rpc_status.to_status(proto)


MAX_DETAILS_BYTES = 4096
"""Largest BadRequest sent (serialized): the status travels in the response's trailing
metadata, base64-encoded, and gRPC clients refuse metadata over 16 KiB (8 KiB by default for
some): a graph with thousands of violations once made every client fail with
RESOURCE_EXHAUSTED instead of reading them. The message counts the violations left out."""
MAX_FIELD_CHARS = 200
"""Characters of one violation's field path."""
MAX_DESCRIPTION_CHARS = 400
"""Characters of one violation's description (it may quote the request)."""


def invalid(violations: Sequence[Violation], message: str = "") -> ApiError:
    """INVALID_ARGUMENT with a BadRequest listing the field violations: as many as fit in
    ``MAX_DETAILS_BYTES``, each cut to a few hundred characters, whatever the request."""
    br = error_details_pb2.BadRequest()
    size = 0
    for v in violations:
        item = error_details_pb2.BadRequest.FieldViolation(
            field=clip(v.field, MAX_FIELD_CHARS),
            description=clip(v.description, MAX_DESCRIPTION_CHARS),
        )
        size += item.ByteSize() + 3  # the field's tag and length
        if br.field_violations and size > MAX_DETAILS_BYTES:
            break
        br.field_violations.append(item)
    if not message:
        first = br.field_violations[0]
        more = f" (and {len(violations) - 1} more)" if len(violations) > 1 else ""
        message = f"{first.field}: {first.description}{more}"
    return ApiError(grpc.StatusCode.INVALID_ARGUMENT, message, [br])


def invalid_field(field: str, description: str) -> ApiError:
    """INVALID_ARGUMENT for one field."""
    return invalid([Violation(field, description)])


def not_found(kind: str, name: str) -> ApiError:
    """NOT_FOUND with ResourceInfo."""
    name = clip(name)  # ids are short; a client's megabytes are not echoed
    info = error_details_pb2.ResourceInfo(
        resource_type=kind, resource_name=name, description=f"no {kind} {name!r}"
    )
    return ApiError(
        grpc.StatusCode.NOT_FOUND,
        f"{kind} {name!r} not found (it never existed or expired after its retention period)",
        [info],
    )


def failed_precondition(kind: str, subject: str, description: str) -> ApiError:
    """FAILED_PRECONDITION with a PreconditionFailure naming what is not satisfied."""
    pf = error_details_pb2.PreconditionFailure()
    pf.violations.add(type=kind, subject=subject, description=description)
    return ApiError(grpc.StatusCode.FAILED_PRECONDITION, description, [pf])


def already_exists(subject: str, description: str) -> ApiError:
    """ALREADY_EXISTS with ErrorInfo."""
    info = error_details_pb2.ErrorInfo(reason="REQUEST_ID_REUSED", domain="dago.v1")
    info.metadata["request_id"] = subject
    return ApiError(grpc.StatusCode.ALREADY_EXISTS, description, [info])


def signal_conflict(subject: str, description: str, winner: dict[str, str]) -> ApiError:
    """ABORTED (HTTP 409 through Envoy) with ErrorInfo ``SIGNAL_CONFLICT`` whose metadata is
    the winning decision (decision, actor, signal_id, iteration, at)."""
    info = error_details_pb2.ErrorInfo(reason="SIGNAL_CONFLICT", domain="dago.v1")
    for key, value in winner.items():
        info.metadata[key] = clip(value)
    info.metadata["subject"] = clip(subject)
    return ApiError(grpc.StatusCode.ABORTED, description, [info])


def unauthenticated(reason: str, message: str) -> ApiError:
    """UNAUTHENTICATED (HTTP 401 through Envoy) with ErrorInfo saying what was wrong."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain="dago.v1")
    return ApiError(grpc.StatusCode.UNAUTHENTICATED, message, [info])


def permission_denied(reason: str, field: str, description: str) -> ApiError:
    """PERMISSION_DENIED (HTTP 403 through Envoy) for a request field the caller may not
    use as it did: ErrorInfo ``reason`` with the field in its metadata, the message naming
    it."""
    info = error_details_pb2.ErrorInfo(reason=reason, domain="dago.v1")
    info.metadata["field"] = field
    return ApiError(grpc.StatusCode.PERMISSION_DENIED, f"{field}: {description}", [info])


def resource_exhausted(subject: str, description: str, limit: float) -> ApiError:
    """RESOURCE_EXHAUSTED (HTTP 429 through Envoy) with a QuotaFailure naming the quota."""
    qf = error_details_pb2.QuotaFailure()
    qf.violations.add(subject=subject, description=description)
    info = error_details_pb2.ErrorInfo(reason="QUOTA_EXCEEDED", domain="dago.v1")
    info.metadata["limit"] = str(limit) if isinstance(limit, int) else f"{limit:g}"
    return ApiError(grpc.StatusCode.RESOURCE_EXHAUSTED, description, [qf, info])


def _translate(exc: BaseException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | ConnectionError):
        log.warning("redis unavailable: %s", exc)
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromMilliseconds(1000)
        return ApiError(
            grpc.StatusCode.UNAVAILABLE,
            "the state store (Redis) is unreachable; retry shortly",
            [info],
        )
    if isinstance(exc, PostgresNoSchema):
        log.error("the run history has no schema: %s", exc)
        return ApiError(
            grpc.StatusCode.FAILED_PRECONDITION,
            "the run history (PostgreSQL) has no schema yet: run `python -m dago migrate` "
            "(or set DAGO_MIGRATE_AT_START=true) against DAGO_POSTGRES_URL",
        )
    if isinstance(exc, PostgresUnavailable):
        log.warning("postgresql unavailable: %s", exc)
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromMilliseconds(1000)
        return ApiError(
            grpc.StatusCode.UNAVAILABLE,
            "the run history (PostgreSQL) is unreachable; retry shortly",
            [info],
        )
    ref = uuid.uuid4().hex[:12]
    log.error("internal error %s", ref, exc_info=exc)
    return ApiError(grpc.StatusCode.INTERNAL, f"internal error (reference {ref}); see server logs")


def guard(
    fn: Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], Awaitable[Resp]]:
    """Wrap a unary RPC so every failure becomes a proper status."""

    @functools.wraps(fn)
    async def wrapper(
        self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> Resp:
        try:
            return await fn(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await context.abort_with_status(_translate(exc).status())
            raise AssertionError("abort_with_status returned") from exc

    return wrapper


def guard_stream(
    fn: Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]],
) -> Callable[[Any, Req, grpc.aio.ServicerContext[Req, Resp]], AsyncIterator[Resp]]:
    """Wrap a server-streaming RPC so every failure becomes a proper status."""

    @functools.wraps(fn)
    async def wrapper(
        self: Any, request: Req, context: grpc.aio.ServicerContext[Req, Resp]
    ) -> AsyncIterator[Resp]:
        try:
            async for item in fn(self, request, context):
                yield item
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await context.abort_with_status(_translate(exc).status())

    return wrapper
