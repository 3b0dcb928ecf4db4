"""Tracing of one relay with OpenTelemetry: its tracer, and W3C Trace Context in and out.

Every relay builds its own ``TracerProvider`` (never the process-wide one), so two relays in one
process — the tests, ``synq demo`` — keep their spans, samplers and exporters apart; the tracer
is handed to each service by the runtime (``Relay.telemetry``).

* Not configured (no ``[telemetry] otlp_endpoint``): the tracer is OpenTelemetry's no-op tracer.
  It records nothing and exports nothing, yet still carries a caller's context: a span started
  under an incoming ``traceparent`` *is* that context, so the envelope's ``trace`` and the
  ``traceparent`` sent to agents continue the caller's trace unchanged (SPEC.md §14.3).
* Configured: spans are sampled (parent-based, ``sample_ratio`` for new traces) and exported
  over OTLP/HTTP (protobuf) by a batch processor in its own thread, off the event loop.

Propagation uses the W3C Trace Context format only (``traceparent``, ``tracestate``): the one the
envelope's ``trace`` field holds (SPEC.md §3.1), and the one MCP's ``_meta`` carries (SEP-414).
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "SpanKind",
    "Telemetry",
    "context_of",
    "extract",
    "inject",
    "otlp_traces_url",
    "traceparent",
]

#: The W3C Trace Context header names (https://www.w3.org/TR/trace-context/ §3.2, §3.3).
TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
#: Where OTLP/HTTP takes traces below a collector's base URL (OTLP specification, "OTLP/HTTP
#: Request"); the same rule as OpenTelemetry's ``OTEL_EXPORTER_OTLP_ENDPOINT``.
OTLP_TRACES_PATH: Final = "/v1/traces"
#: The instrumentation scope of Synq's spans.
SCOPE: Final = "synq"

_PROPAGATOR: Final = TraceContextTextMapPropagator()


def extract(carrier: Mapping[str, str]) -> Context | None:
    """The context a request's ``traceparent`` (and ``tracestate``) names, or None when it has
    none or a malformed one (W3C Trace Context §4.3: a receiver ignores what it cannot parse)."""
    if TRACEPARENT not in carrier:
        return None
    ctx = _PROPAGATOR.extract({k: carrier[k] for k in (TRACEPARENT, TRACESTATE) if k in carrier})
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx


def context_of(value: str | None) -> Context | None:
    """The context an envelope's ``trace`` field names (SPEC.md §3.1), or None."""
    return extract({TRACEPARENT: value}) if value else None


def traceparent(span: Span | None = None) -> str | None:
    """``span``'s (default: the current span's) ``traceparent`` value, or None without one."""
    ctx = (span or trace.get_current_span()).get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def inject(carrier: MutableMapping[str, str]) -> None:
    """Write the current context's ``traceparent`` (and ``tracestate``) into ``carrier``."""
    _PROPAGATOR.inject(carrier)


def otlp_traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL for a configured endpoint: a base URL gets ``/v1/traces``; a URL
    that already names a path is used as it is."""
    base = endpoint.rstrip("/")
    scheme_end = base.find("://")
    has_path = scheme_end >= 0 and "/" in base[scheme_end + 3 :]
    return base if has_path else base + OTLP_TRACES_PATH


@dataclass
class Telemetry:
    """The tracer of one relay and what it owns. ``Telemetry.off()`` records nothing."""

    tracer: Tracer
    provider: TracerProvider | None = None
    #: Processors added by the caller or the configuration; shut down with the provider.
    processors: list[SpanProcessor] = field(default_factory=list)

    @property
    def recording(self) -> bool:
        return self.provider is not None

    @classmethod
    def off(cls) -> Telemetry:
        return cls(trace.NoOpTracer())

    @classmethod
    def build(
        cls,
        *,
        service_name: str = "synq",
        sample_ratio: float = 1.0,
        processors: Sequence[SpanProcessor] = (),
        exporters: Sequence[SpanExporter] = (),
        attributes: Mapping[str, str] | None = None,
    ) -> Telemetry:
        """A recording tracer: spans sampled at ``sample_ratio`` (children follow their parent's
        decision), handed to ``processors`` and, through a batch processor each, ``exporters``."""
        resource = Resource.create({"service.name": service_name, **(attributes or {})})
        provider = TracerProvider(
            resource=resource, sampler=ParentBased(TraceIdRatioBased(sample_ratio))
        )
        added = [*processors, *(BatchSpanProcessor(e) for e in exporters)]
        for processor in added:
            provider.add_span_processor(processor)
        return cls(provider.get_tracer(SCOPE), provider, added)

    @classmethod
    def configured(
        cls,
        otlp_endpoint: str | None,
        *,
        service_name: str,
        sample_ratio: float,
        domain: str,
    ) -> Telemetry:
        """What ``[telemetry]`` asks for: OTLP/HTTP export to ``otlp_endpoint``, or nothing."""
        if not otlp_endpoint:
            return cls.off()
        # Imported only when export is configured: the exporter pulls in its HTTP client.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=otlp_traces_url(otlp_endpoint))
        return cls.build(
            service_name=service_name,
            sample_ratio=sample_ratio,
            exporters=[exporter],
            attributes={"synq.domain": domain},
        )

    def flush(self, timeout_millis: int = 5000) -> bool:
        """Export what is buffered now (tests; shutdown)."""
        if self.provider is None:
            return True
        return self.provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Flush and stop the exporters (the relay is closing)."""
        if self.provider is not None:
            self.provider.shutdown()
