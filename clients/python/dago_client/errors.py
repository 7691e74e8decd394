"""Typed exceptions for failed calls, carrying the google.rpc.Status details the server sent.

Every RPC failure becomes a :class:`DagoError` subclass chosen by the gRPC code, e.g.
:class:`InvalidArgumentError` whose :attr:`~DagoError.field_violations` list the
google.rpc.BadRequest entries (``field``, ``description``) of a rejected graph.
"""

from __future__ import annotations

from typing import Any, TypeVar

import google.rpc.error_details_pb2 as error_details_pb2
import google.rpc.status_pb2 as status_pb2
import grpc
from google.protobuf.message import Message

M = TypeVar("M", bound=Message)

# The detail messages the server and Envoy send (see service/dago/errors.py).
DETAIL_TYPES: tuple[type[Message], ...] = (
    error_details_pb2.BadRequest,
    error_details_pb2.PreconditionFailure,
    error_details_pb2.ResourceInfo,
    error_details_pb2.ErrorInfo,
    error_details_pb2.RetryInfo,
    error_details_pb2.QuotaFailure,
    error_details_pb2.DebugInfo,
    error_details_pb2.Help,
    error_details_pb2.LocalizedMessage,
    error_details_pb2.RequestInfo,
)


class DagoError(Exception):
    """A failed call: the gRPC code, the message and the unpacked google.rpc details."""

    def __init__(
        self, code: grpc.StatusCode, message: str, details: list[Message] | None = None
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.details: list[Message] = list(details or [])

    def detail(self, kind: type[M]) -> M | None:
        """The first detail of type ``kind``, if any."""
        for d in self.details:
            if isinstance(d, kind):
                return d
        return None

    @property
    def field_violations(self) -> list[error_details_pb2.BadRequest.FieldViolation]:
        """The google.rpc.BadRequest field violations (empty when there are none)."""
        out: list[error_details_pb2.BadRequest.FieldViolation] = []
        for d in self.details:
            if isinstance(d, error_details_pb2.BadRequest):
                out.extend(d.field_violations)
        return out

    @property
    def precondition_violations(
        self,
    ) -> list[error_details_pb2.PreconditionFailure.Violation]:
        """The google.rpc.PreconditionFailure violations (empty when there are none)."""
        out: list[error_details_pb2.PreconditionFailure.Violation] = []
        for d in self.details:
            if isinstance(d, error_details_pb2.PreconditionFailure):
                out.extend(d.violations)
        return out

    @property
    def retry_delay_s(self) -> float | None:
        """The google.rpc.RetryInfo delay in seconds, when the server suggested one."""
        info = self.detail(error_details_pb2.RetryInfo)
        if info is None or not info.HasField("retry_delay"):
            return None
        return info.retry_delay.ToMilliseconds() / 1000.0


class InvalidArgumentError(DagoError):
    """INVALID_ARGUMENT: the request (e.g. the graph) is wrong; see field_violations."""


class NotFoundError(DagoError):
    """NOT_FOUND: no such graph (never existed, or expired)."""


class AlreadyExistsError(DagoError):
    """ALREADY_EXISTS: a request_id reused with a different request."""


class FailedPreconditionError(DagoError):
    """FAILED_PRECONDITION: e.g. the result of a running graph, cancelling a finished one."""


class AbortedError(DagoError):
    """ABORTED (HTTP 409): the call lost a race, e.g. a signal to a wait node another signal
    already decided (its ErrorInfo ``metadata`` holds the winning decision)."""


class UnavailableError(DagoError):
    """UNAVAILABLE: the server or its state store cannot be reached; retry later."""


class DeadlineExceededError(DagoError):
    """DEADLINE_EXCEEDED: the call took longer than its deadline."""


class UnauthenticatedError(DagoError):
    """UNAUTHENTICATED: no or a wrong API key (set DAGO_API_KEY)."""


class PermissionDeniedError(DagoError):
    """PERMISSION_DENIED: the API key may not make this call."""


class ResourceExhaustedError(DagoError):
    """RESOURCE_EXHAUSTED: rate limited or over a quota."""


class InternalError(DagoError):
    """INTERNAL or UNKNOWN: a server fault (its message has a reference for the logs)."""


_BY_CODE: dict[grpc.StatusCode, type[DagoError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.ABORTED: AbortedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
}


def unpack_details(status: status_pb2.Status) -> list[Message]:
    """The details of a google.rpc.Status as messages (unknown types are skipped)."""
    out: list[Message] = []
    for packed in status.details:
        for cls in DETAIL_TYPES:
            if packed.Is(cls.DESCRIPTOR):  # type: ignore[arg-type]
                msg = cls()
                packed.Unpack(msg)
                out.append(msg)
                break
    return out


def from_rpc_error(err: grpc.RpcError) -> DagoError:
    """The typed error for a failed call (sync ``grpc.Call`` or ``grpc.aio.AioRpcError``)."""
    call: Any = err
    code: grpc.StatusCode = call.code()
    message: str = call.details() or ""
    details: list[Message] = []
    for key, value in call.trailing_metadata() or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            details = unpack_details(status)
            message = status.message or message
    return _BY_CODE.get(code, DagoError)(code, message, details)
