"""The gRPC server interceptor that measures and traces every RPC.

Metrics: ``dago_rpc_requests_total{method, code}`` for every call,
``dago_rpc_duration_seconds{method}`` for unary calls (streams such as WatchGraph live as
long as their client, so their duration says nothing), ``dago_rpc_streams_open{method}``
for the server streams open now (the watchers). Traces: a SERVER span per unary
call, joining the caller's ``traceparent`` metadata when it sends one; the SubmitGraph
span is the root of the graph's trace.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from opentelemetry.trace import SpanKind

from dago.observe.metrics import Metrics
from dago.observe.tracing import Tracing, fail


def _code(context: Any, default: str) -> str:
    code = context.code()
    if code is None:
        return default
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    try:
        return str(grpc.StatusCode(code).name) if not isinstance(code, int) else _by_int(code)
    except ValueError:
        return default


def _by_int(n: int) -> str:
    for c in grpc.StatusCode:
        if c.value[0] == n:
            return str(c.name)
    return "UNKNOWN"


class RpcObserver(grpc.aio.ServerInterceptor):
    """Counts, times and traces RPCs (install it first, so it sees rejected calls too)."""

    def __init__(self, metrics: Metrics, tracing: Tracing) -> None:
        self._metrics = metrics
        self._tracing = tracing
        self._wrapped: dict[str, tuple[Any, Any]] = {}
        """By method: the handler the continuation last gave, and its wrapped form."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        """Wrap the unary-unary and unary-stream handlers; pass the others through.

        The wrapped handler is made once per method and handler: building it (the closures,
        the metric children of its labels, a new method handler) on every call was CPU the
        API spent per RPC for nothing. It is made again when the continuation gives another
        handler for the method (an interceptor after this one that wraps per call, as
        authentication does, so the cache never serves a handler other than the one given).
        """
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = str(handler_call_details.method).lstrip("/")
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(method, handler)
        # Only methods the server has reach here (unknown ones get no handler), so this
        # holds at most one entry per method the server registered.
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: Any) -> Any:
        """The observed form of ``handler`` (or ``handler`` itself, if not observed)."""
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, handler.unary_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _unary(self, method: str, inner: Any) -> Any:
        requests, duration = self._metrics.rpc_requests, self._metrics.rpc_duration.labels(method)
        tracing = self._tracing
        service, _, name = method.partition("/")

        async def behavior(request: Any, context: Any) -> Any:
            started = time.perf_counter()
            code = "OK"
            parent = tracing.extract_metadata(context.invocation_metadata()) if tracing else None
            attrs = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
            with tracing.span(method, attrs, SpanKind.SERVER, parent) as span:
                try:
                    return await inner(request, context)
                except BaseException:
                    code = _code(context, "UNKNOWN")
                    fail(span, code)
                    raise
                finally:
                    if code == "OK":
                        code = _code(context, "OK")
                    if span is not None:
                        span.set_attribute("rpc.grpc.status_code", code)
                    requests.labels(method, code).inc()
                    duration.observe(time.perf_counter() - started)

        return behavior

    def _stream(self, method: str, inner: Any) -> Any:
        requests, open_now = self._metrics.rpc_requests, self._metrics.rpc_streams.labels(method)

        if not inspect.isasyncgenfunction(inner):
            # A handler that writes with ``context.write`` and returns nothing (the standard
            # health service's Watch): wrapped as one too. Iterating what it returns (a
            # coroutine) failed every such call with UNKNOWN and a traceback.
            async def writes(request: Any, context: Any) -> None:
                code = "OK"
                open_now.inc()
                try:
                    await inner(request, context)
                except BaseException:
                    code = _code(context, "CANCELLED")
                    raise
                finally:
                    open_now.dec()
                    if code == "OK":
                        code = _code(context, "OK")
                    requests.labels(method, code).inc()

            return writes

        async def behavior(request: Any, context: Any) -> AsyncIterator[Any]:
            code = "OK"
            open_now.inc()
            try:
                async for item in inner(request, context):
                    yield item
            except BaseException:
                code = _code(context, "CANCELLED")
                raise
            finally:
                open_now.dec()
                if code == "OK":
                    code = _code(context, "OK")
                requests.labels(method, code).inc()

        return behavior
