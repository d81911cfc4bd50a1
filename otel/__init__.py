"""tracegate's library: one trace id from the first header to Sentry and OTLP.

Adopt it in any Flask + RQ + Sentry service with one call per process::

    import otel

    otel.setup()                  # provider, propagator and Sentry from the environment
    app = Flask(__name__)
    otel.instrument_flask(app)    # server spans, traceresponse / X-Trace-ID headers

    headers: dict[str, str] = {}
    otel.inject(headers)          # traceparent, tracestate, baggage, sentry-trace
    otel.current_trace_id_uuid()  # '4bf92f35-77b3-4da6-a3ce-929d0e0e4736' or None

Configuration is the ecosystem's own environment (`OTEL_*`, `SENTRY_*`) plus a few
`TRACEGATE_*` settings; see `otel.config.TelemetryConfig`.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from opentelemetry.context import Context

from otel import ids
from otel.config import ConfigError, TelemetryConfig
from otel.telemetry import Telemetry, active, setup

if TYPE_CHECKING:
    import flask

__all__ = [
    "ConfigError",
    "Telemetry",
    "TelemetryConfig",
    "active",
    "current_trace_id_hex",
    "current_trace_id_uuid",
    "extract",
    "inject",
    "instrument_flask",
    "setup",
]


def instrument_flask(app: flask.Flask, telemetry: Telemetry | None = None) -> flask.Flask:
    """Trace `app` with the process's telemetry (`setup()` is called if needed)."""
    from otel.flask import instrument_flask as _instrument_flask  # workers never need Flask

    telemetry = telemetry or setup()
    config = telemetry.config
    return _instrument_flask(
        app,
        tracer_provider=telemetry.tracer_provider(),
        trace_id_format=config.trace_id_format,
        cors_origins=config.cors_origins,
        excluded_urls=config.excluded_urls,
        inbound_sampled_from=config.inbound_sampled_from,
        old_http_names=config.http_old_names,
    )


def inject(carrier: MutableMapping[str, str], context: Context | None = None) -> None:
    """Write the current trace context into `carrier` (headers, a job's meta)."""
    from opentelemetry import propagate  # reads OTEL_PROPAGATORS when first imported

    propagate.inject(carrier, context=context)


def extract(carrier: Any, context: Context | None = None) -> Context:
    """The context a carrier continues; an empty one when it carries no valid trace."""
    from opentelemetry import propagate

    return propagate.extract(carrier, context=context)


def current_trace_id_hex() -> str | None:
    span_context = trace.get_current_span().get_span_context()
    return ids.trace_id_hex(span_context.trace_id) if span_context.is_valid else None


def current_trace_id_uuid() -> str | None:
    span_context = trace.get_current_span().get_span_context()
    return ids.trace_id_uuid(span_context.trace_id) if span_context.is_valid else None
