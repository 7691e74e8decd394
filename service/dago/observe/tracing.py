"""OpenTelemetry traces: one trace per graph, across the API and every worker.

The SubmitGraph RPC's span is the root (or joins the caller's ``traceparent``); its W3C
trace context is stored with the graph in Redis (``tp`` in the graph's meta hash), so every
node attempt, on any worker, after any redelivery or reclaim, starts a span that is its
child; LLM, HTTP and tool calls made by the attempt are the attempt span's children.

Export is OTLP over gRPC, configured by the standard ``OTEL_*`` environment
(``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``,
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``). Without an endpoint (or with
``OTEL_SDK_DISABLED=true`` / ``OTEL_TRACES_EXPORTER=none``) tracing is off: the SDK is not
even imported and call sites skip their spans (``enabled`` is False).

No global tracer provider is installed: the provider belongs to the :class:`Tracing`
object the composition root builds and hands to the components that make spans.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger("dago.tracing")

_PROPAGATOR = TraceContextTextMapPropagator()


def enabled_by(environ: Mapping[str, str]) -> bool:
    """True when the OTEL_* environment asks for trace export."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    )


def trace_id_of(traceparent: str) -> str:
    """The trace id (32 hex digits) of a W3C traceparent, or "" when it is not one."""
    parts = traceparent.split("-")
    return parts[1] if len(parts) == 4 and len(parts[1]) == 32 else ""


class Tracing:
    """The tracer of one process (a no-op tracer when export is off)."""

    def __init__(self, service_name: str, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.enabled = enabled_by(env)
        self._provider: Any = None
        self.tracer: trace.Tracer = trace.NoOpTracer()
        if self.enabled:
            # Imported only here: a process without an endpoint never loads the SDK.
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import SERVICE_NAME, Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor

            attrs = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
            self._provider = TracerProvider(resource=Resource.create(attrs))
            self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            self.tracer = self._provider.get_tracer("dago")
            log.info("tracing: OTLP export on (service %s)", service_name)

    def shutdown(self) -> None:
        """Export what is buffered and stop (at process exit)."""
        if self._provider is not None:
            self._provider.shutdown()

    # --- context ---------------------------------------------------------------------

    @staticmethod
    def extract(traceparent: str) -> Context | None:
        """The context a W3C traceparent names (None when empty)."""
        if not traceparent:
            return None
        return _PROPAGATOR.extract({"traceparent": traceparent})

    @staticmethod
    def extract_metadata(metadata: Any) -> Context | None:
        """The caller's context from gRPC invocation metadata (a ``traceparent`` entry)."""
        carrier = {k: v for k, v in (metadata or ()) if k in ("traceparent", "tracestate")}
        return _PROPAGATOR.extract(carrier) if "traceparent" in carrier else None

    def traceparent(self) -> str:
        """The current span's W3C traceparent; when none is recording, a fresh one (not
        sampled) so logs of the graph still share a trace id."""
        carrier: dict[str, str] = {}
        if self.enabled:
            _PROPAGATOR.inject(carrier)
        return carrier.get("traceparent") or (
            f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"
        )

    # --- spans -----------------------------------------------------------------------

    @contextlib.contextmanager
    def span(
        self,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        parent: Context | None = None,
    ) -> Iterator[Span | None]:
        """A current span (None when tracing is off). An exception leaving it marks the span
        as an error and records the exception's type and message (never its locals)."""
        if not self.enabled:
            yield None
            return
        with self.tracer.start_as_current_span(
            name,
            context=parent,
            kind=kind,
            attributes=dict(attributes or {}),
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except BaseException as e:
                span.set_status(Status(StatusCode.ERROR, type(e).__name__))
                span.set_attribute("error.type", type(e).__name__)
                raise

    @contextlib.contextmanager
    def open_span(
        self, name: str, attributes: Mapping[str, Any], parent: Context | None = None
    ) -> Iterator[Span | None]:
        """A span current for the block but left open when it exits (None when tracing is
        off): its owner ends it later (a node attempt's span ends once its result is
        applied, so it can say what became of the node)."""
        if not self.enabled:
            yield None
            return
        span = self.tracer.start_span(name, context=parent, attributes=dict(attributes))
        with trace.use_span(
            span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        ):
            yield span


def fail(span: Span | None, error_type: str, message: str = "") -> None:
    """Mark ``span`` as failed (no-op when tracing is off)."""
    if span is not None:
        span.set_status(Status(StatusCode.ERROR, message[:200] or error_type))
        span.set_attribute("error.type", error_type)
