"""OpenTelemetry traces: a server span per request, a client span for the upstream call.

Only imported when tracing is configured (``tracing:`` or the standard
``OTEL_EXPORTER_OTLP_ENDPOINT``); without it the gateway holds ``None`` and
the request path pays one ``is None`` test per stage. Needs the ``otel``
extra: ``pip install 'gatehouse[otel]'``.

The server span continues the caller's W3C ``traceparent`` (a sampled caller
is always sampled; new traces follow ``sample_ratio``). It carries the route,
backend, decision and reason as attributes and one event at the end of each
stage (the gaps between events are the stages' timings); the upstream call is
a child span, and the
``traceparent`` sent upstream names that child, so the upstream's own spans
hang under it. Spans leave through the SDK's batch processor (bounded queue,
exported from its own thread) over OTLP/HTTP to ``<otlp_endpoint>/v1/traces``.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from proxy import __version__
from proxy.http.forwarding import TraceContext
from proxy.observability.config import TracingConfig

if TYPE_CHECKING:
    from proxy.observability.audit import AuditRecord

_PROPAGATOR = TraceContextTextMapPropagator()


class Tracing:
    """One per worker process: the tracer provider and its exporter."""

    def __init__(self, config: TracingConfig) -> None:
        self.config = config
        resource = Resource.create(
            {"service.name": config.service_name, "service.version": __version__}
        )
        # Sampling is decided before the SDK is asked (see RequestTrace.start):
        # an unsampled request then costs no SDK work at all.
        self._provider = TracerProvider(
            resource=resource,
            sampler=ParentBased(ALWAYS_ON),
            shutdown_on_exit=False,  # workers end with os._exit: shutdown() is explicit
        )
        exporter = OTLPSpanExporter(endpoint=f"{config.otlp_endpoint}/v1/traces")
        self._provider.add_span_processor(BatchSpanProcessor(exporter))
        self._tracer = self._provider.get_tracer("gatehouse", __version__)

    def request(self) -> RequestTrace:
        return RequestTrace(self._tracer, self.config.sample_ratio)

    def shutdown(self) -> None:
        """Export what is queued, then stop (blocks: call it off the event loop)."""
        self._provider.shutdown()


class RequestTrace:
    """The spans of one request; the gateway calls it at each stage."""

    __slots__ = ("_ratio", "_recording", "_server", "_tracer", "_upstream")

    def __init__(self, tracer: trace.Tracer, ratio: float) -> None:
        self._tracer = tracer
        self._ratio = ratio
        self._server: trace.Span = trace.INVALID_SPAN  # until start()
        self._upstream: trace.Span | None = None
        self._recording = False

    def start(self, incoming: TraceContext, caller: dict[str, str], method: str) -> TraceContext:
        """Open the server span under the caller's traceparent (if it sent a valid one).

        Returns this hop's trace context, which replaces the gateway's own ids
        so the audit record and the upstream see the exported trace.
        """
        traceparent = caller.get("traceparent")
        # The gateway kept the caller's trace id only if its traceparent was valid.
        continued = traceparent is not None and incoming.trace_id in traceparent
        # A caller's sampled flag is followed; a new trace is sampled at the ratio.
        sampled = (
            bool(int(incoming.flags, 16) & 1) if continued else random.random() < self._ratio  # noqa: S311 - sampling, not a secret
        )
        if not sampled:
            # Nothing recorded, nothing asked of the SDK; upstream learns "not sampled".
            return TraceContext(incoming.trace_id, incoming.parent_id, "00", incoming.tracestate)
        parent = _PROPAGATOR.extract(caller) if continued else None
        span = self._tracer.start_span(method, context=parent, kind=SpanKind.SERVER)
        span.set_attribute("http.request.method", method)
        self._server = span
        self._recording = True
        return _context_of(span, incoming.tracestate)

    @property
    def recording(self) -> bool:
        """Sampled: the gateway drops an unsampled trace after start() and skips the rest."""
        return self._recording

    def stage(self, name: str) -> None:
        """An event at the end of stage ``name``: its time minus the previous
        event's (or the span's start) is how long the stage took. Events carry
        no attributes of their own: each would cost as much as the event."""
        if self._recording:
            self._server.add_event(name)

    def upstream(self, incoming: TraceContext, backend: str, method: str) -> TraceContext:
        """Open the child span for the upstream call; its context goes upstream."""
        if not self._recording:
            return incoming
        context = trace.set_span_in_context(self._server)
        span = self._tracer.start_span(
            f"{method} {backend}",
            context=context,
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": method, "gatehouse.backend": backend},
        )
        self._upstream = span
        return _context_of(span, incoming.tracestate)

    def upstream_done(self, status: int | None) -> None:
        """Close the upstream span: ``status`` as answered, None when the call failed."""
        span, self._upstream = self._upstream, None
        if span is None:
            return
        if status is not None:
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        else:
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        self.stage("upstream")

    def finish(self, record: AuditRecord) -> None:
        """Close both spans with what the request came to (from its audit record)."""
        if self._upstream is not None:
            self.upstream_done(record.upstream_status)
        if not self._recording:
            return
        span, self._recording = self._server, False
        if record.route is not None:
            span.update_name(f"{record.method} {record.route}")
        attributes: dict[str, str | int] = {
            "http.response.status_code": record.status,
            "gatehouse.request_id": record.request_id,
            "gatehouse.decision": record.decision,
            "gatehouse.reason": record.reason,
        }
        for key, value in (
            ("gatehouse.route", record.route),
            ("gatehouse.backend", record.backend),
            ("gatehouse.policy_version", record.policy_version),
            ("gatehouse.auth", record.auth),
            ("url.path", record.path),
            ("server.address", record.host),
            ("client.address", record.client_ip),
            ("user_agent.original", record.user_agent),
        ):
            if value is not None:
                attributes[key] = value
        span.set_attributes(attributes)
        if record.status >= 500:
            span.set_status(Status(StatusCode.ERROR, record.reason))
        span.end()


def _context_of(span: trace.Span, tracestate: str | None) -> TraceContext:
    ctx = span.get_span_context()
    flags = "01" if ctx.trace_flags.sampled else "00"
    return TraceContext(
        trace.format_trace_id(ctx.trace_id), trace.format_span_id(ctx.span_id), flags, tracestate
    )
