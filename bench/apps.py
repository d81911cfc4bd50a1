"""The HTTP benchmark's variants: one trivial JSON route, traced seven ways.

`create_app(variant)` is the gunicorn app factory (`"bench.apps:create_app('otel')"`):
gunicorn calls it in each worker after the fork, so every variant sets up its
telemetry there, as a real deployment must. Endpoints and DSNs come from the
environment the benchmark gives each server; nothing is read at import.

- `bare`            Flask alone;
- `otel`            OpenTelemetry SDK + Flask instrumentation + BatchSpanProcessor +
                    OTLP/HTTP exporter (OTEL_EXPORTER_OTLP_ENDPOINT);
- `sentry`          sentry-sdk's own tracing (traces_sample_rate=1.0), transactions
                    posted to SENTRY_DSN;
- `sentry-otel`     sentry-sdk's OpenTelemetry bridge: instrumenter="otel",
                    SentrySpanProcessor, SentryPropagator, Flask instrumentation;
- `sentry-otlp`     sentry-sdk's OTLPIntegration: spans exported over OTLP to the
                    DSN's OTLP endpoint;
- `tracegate`       `otel.setup()` + `otel.instrument_flask(app)`: OTLP export and a
                    Sentry transaction per sampled request;
- `tracegate-otlp`  the same with TRACEGATE_SENTRY_TRACES=otlp (the environment says
                    so; the code is the same as `tracegate`).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import flask

__all__ = ["VARIANTS", "create_app"]


def _bare(app: flask.Flask) -> None:
    """No telemetry: the baseline."""


def _otel(app: flask.Flask) -> None:
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # The resource (OTEL_SERVICE_NAME), the endpoint and the batch settings come from
    # the environment, as the SDK reads them.
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    FlaskInstrumentor.instrument_app(app, tracer_provider=provider)


def _sentry(app: flask.Flask) -> None:
    import sentry_sdk

    sentry_sdk.init(dsn=os.environ["SENTRY_DSN"], traces_sample_rate=1.0)


def _sentry_otel(app: flask.Flask) -> None:
    import sentry_sdk
    from opentelemetry import trace
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from opentelemetry.propagate import set_global_textmap
    from opentelemetry.sdk.trace import TracerProvider
    from sentry_sdk.integrations.opentelemetry import SentryPropagator, SentrySpanProcessor

    # The processor does nothing unless the client's transport parsed a DSN: the
    # default HTTP transport to the local receiver does.
    sentry_sdk.init(dsn=os.environ["SENTRY_DSN"], instrumenter="otel", traces_sample_rate=1.0)
    provider = TracerProvider()
    with warnings.catch_warnings():  # deprecated upstream; still what users run
        warnings.simplefilter("ignore", DeprecationWarning)
        provider.add_span_processor(SentrySpanProcessor())
    trace.set_tracer_provider(provider)
    set_global_textmap(SentryPropagator())
    FlaskInstrumentor.instrument_app(app, tracer_provider=provider)


def _sentry_otlp(app: flask.Flask) -> None:
    import sentry_sdk
    from opentelemetry import trace
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from sentry_sdk.integrations.otlp import OTLPIntegration

    # The integration makes the tracer provider and its batch OTLP exporter to the
    # DSN's endpoint; Sentry's own tracing stays off, as its documentation says.
    sentry_sdk.init(dsn=os.environ["SENTRY_DSN"], integrations=[OTLPIntegration()])
    FlaskInstrumentor.instrument_app(app, tracer_provider=trace.get_tracer_provider())


def _tracegate(app: flask.Flask) -> None:
    import otel

    otel.instrument_flask(app, otel.setup())


VARIANTS: dict[str, Callable[[flask.Flask], None]] = {
    "bare": _bare,
    "otel": _otel,
    "sentry": _sentry,
    "sentry-otel": _sentry_otel,
    "sentry-otlp": _sentry_otlp,
    "tracegate": _tracegate,
    "tracegate-otlp": _tracegate,
}


def create_app(variant: str) -> flask.Flask:
    """The benchmark app, with `variant`'s telemetry set up in this process."""
    app = flask.Flask(f"bench-{variant}")

    @app.get("/hello")
    def hello() -> dict[str, object]:
        # The pid lets the benchmark see that every worker is up before it measures.
        return {"hello": "world", "pid": os.getpid()}

    VARIANTS[variant](app)
    return app
