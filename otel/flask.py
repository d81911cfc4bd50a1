"""Instrument a Flask app: server spans, trace response headers and CORS lists.

OpenTelemetry's Flask instrumentation makes the server span (continuing the inbound
trace through the global propagator, so tracegate's precedence applies). On top:

- `traceresponse` and `X-Trace-ID` on every response of a traced request
  (`X-Trace-ID` in UUID spelling, or hex with `trace_id_format="hex"`);
- the request's trace context is pinned for Sentry from the first moment the server
  span exists until the response is returned, sampled or not, so errors captured in
  error handlers or teardown still link;
- CORS: the trace headers are listed in `Access-Control-Expose-Headers` and, on
  preflight from an allowed origin, in `Access-Control-Allow-Headers`.

State lives in `app.extensions["tracegate"]`; nothing is kept in module globals.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any

import flask
from opentelemetry import trace
from opentelemetry.instrumentation.flask import FlaskInstrumentor

from otel import ids
from otel.provider import trust_inbound, untrust_reset
from otel.sentry import open_unit, pin, unpin

__all__ = ["ALLOW_HEADERS", "EXPOSE_HEADERS", "FlaskTracing", "instrument_flask"]

EXPOSE_HEADERS = ("traceresponse", "X-Trace-ID")
ALLOW_HEADERS = ("traceparent", "tracestate", "baggage", "sentry-trace", "X-Trace-ID")


@dataclass(frozen=True)
class FlaskTracing:
    """What `instrument_flask` set up, kept in `app.extensions["tracegate"]`."""

    trace_id_format: str
    cors_origins: tuple[str, ...]
    excluded_urls: str
    # Networks whose callers may decide sampling; empty: the configuration decides.
    sampled_from: tuple[IPv4Network | IPv6Network, ...] = ()


def instrument_flask(
    app: flask.Flask,
    *,
    tracer_provider: trace.TracerProvider | None = None,
    trace_id_format: str = "uuid",
    cors_origins: Iterable[str] = (),
    excluded_urls: str = "",
    inbound_sampled_from: Iterable[str] = (),
) -> flask.Flask:
    """Instrument `app` once; a second call is a no-op.

    With `inbound_sampled_from` (CIDR networks), an inbound sampled flag is obeyed
    only from a peer address in one of them; other callers' traces are continued
    but sampled by the configured sampler.
    """
    if "tracegate" in app.extensions:
        return app
    networks = tuple(ip_network(n, strict=False) for n in inbound_sampled_from)
    state = FlaskTracing(trace_id_format, tuple(cors_origins), excluded_urls, networks)
    app.extensions["tracegate"] = state
    FlaskInstrumentor.instrument_app(
        app,
        tracer_provider=tracer_provider,
        excluded_urls=excluded_urls,
        request_hook=_pin_request,
        enable_commenter=False,
    )
    app.wsgi_app = _Unpinning(app.wsgi_app, networks)  # type: ignore[method-assign]
    app.after_request(lambda response: _add_headers(state, response))
    return app


def _pin_request(span: trace.Span, environ: dict[str, Any]) -> None:
    # Runs between span start and activation: the current span is still the inbound
    # parent, which an unsampled (non-recording) server span cannot tell us later.
    parent = trace.get_current_span().get_span_context()
    pin(span.get_span_context(), parent.span_id if parent.is_valid else None)


class _Unpinning:
    """Outermost WSGI layer: whatever a request pinned is gone when it returns; and,
    before the server span is sampled, whether its caller may decide sampling."""

    def __init__(
        self,
        wsgi_app: Callable[..., Any],
        sampled_from: tuple[IPv4Network | IPv6Network, ...] = (),
    ) -> None:
        self.wsgi_app = wsgi_app
        self.sampled_from = sampled_from

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        token = open_unit()
        trust = trust_inbound(_trusted(environ, self.sampled_from)) if self.sampled_from else None
        try:
            return self.wsgi_app(environ, start_response)
        finally:
            if trust is not None:
                untrust_reset(trust)
            unpin(token)


def _trusted(environ: dict[str, Any], networks: tuple[IPv4Network | IPv6Network, ...]) -> bool:
    # The peer itself, never X-Forwarded-For: a header is what an untrusted caller sets.
    try:
        address = ip_address(str(environ.get("REMOTE_ADDR", "")).split("%")[0])
    except ValueError:
        return False
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def _add_headers(state: FlaskTracing, response: flask.Response) -> flask.Response:
    span_context = trace.get_current_span().get_span_context()
    if span_context.is_valid:
        response.headers["traceresponse"] = ids.format_traceparent(
            span_context.trace_id, span_context.span_id, span_context.trace_flags
        )
        response.headers["X-Trace-ID"] = (
            ids.trace_id_hex(span_context.trace_id)
            if state.trace_id_format == "hex"
            else ids.trace_id_uuid(span_context.trace_id)
        )
    _add_cors(state, response)
    return response


def _add_cors(state: FlaskTracing, response: flask.Response) -> None:
    _merge_list(response, "Access-Control-Expose-Headers", EXPOSE_HEADERS)
    origin = flask.request.headers.get("Origin")
    if not origin or not state.cors_origins:
        return
    if "*" not in state.cors_origins and origin not in state.cors_origins:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    _merge_list(response, "Vary", ("Origin",))
    if flask.request.method == "OPTIONS":
        # A browser's JSON POST with a bearer key asks for these two beside the trace.
        allowed = (*ALLOW_HEADERS, "Content-Type", "Authorization")
        _merge_list(response, "Access-Control-Allow-Headers", allowed)
        methods = [m.strip() for m in response.headers.get("Allow", "").split(",") if m.strip()]
        if methods:  # Flask's own OPTIONS answer lists the route's methods
            _merge_list(response, "Access-Control-Allow-Methods", methods)


def _merge_list(response: flask.Response, header: str, values: Iterable[str]) -> None:
    current = response.headers.get(header)
    if not current:
        response.headers[header] = ", ".join(values)
        return
    present = [v.strip() for v in current.split(",") if v.strip()]
    lowered = {v.lower() for v in present}
    present += [v for v in values if v.lower() not in lowered]
    response.headers[header] = ", ".join(present)
