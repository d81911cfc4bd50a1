"""Instrument a Flask app: server spans, trace response headers and CORS lists.

tracegate's own WSGI layer (`otel.server.ServerSpans`) makes the server span,
continuing the inbound trace through the global propagator (so tracegate's
precedence applies), in the stable HTTP semantic conventions. On top:

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

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network

import flask
from opentelemetry import trace

from otel import ids
from otel.sentry_request import direct_calls
from otel.server import SPAN_KEY, ServerSpans, fail_span, mark_failed, name_route

__all__ = ["ALLOW_HEADERS", "EXPOSE_HEADERS", "FlaskTracing", "instrument_flask"]

EXPOSE_HEADERS = ("traceresponse", "X-Trace-ID")
ALLOW_HEADERS = ("traceparent", "tracestate", "baggage", "sentry-trace", "X-Trace-ID")
TRACER_NAME = "otel.flask"


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
    old_http_names: bool = False,
) -> flask.Flask:
    """Instrument `app` once; a second call is a no-op.

    With `inbound_sampled_from` (CIDR networks), an inbound sampled flag is obeyed
    only from a peer address in one of them; other callers' traces are continued
    but sampled by the configured sampler. `old_http_names` adds the pre-1.21 HTTP
    attribute names beside the stable ones (`OTEL_SEMCONV_STABILITY_OPT_IN=http/dup`).
    """
    if "tracegate" in app.extensions:
        return app
    networks = tuple(ip_network(n, strict=False) for n in inbound_sampled_from)
    state = FlaskTracing(trace_id_format, tuple(cors_origins), excluded_urls, networks)
    app.extensions["tracegate"] = state
    provider = tracer_provider or trace.get_tracer_provider()
    direct_calls(app)  # the request's Sentry scope is made by `ServerSpans`
    app.wsgi_app = ServerSpans(  # type: ignore[method-assign]
        app.wsgi_app,
        provider.get_tracer(TRACER_NAME),
        excluded_urls=excluded_urls,
        sampled_from=networks,
        old_names=old_http_names,
    )
    # First of the app's hooks, so later ones see the span under its route's name.
    app.before_request_funcs.setdefault(None, []).insert(0, _name_route)
    app.teardown_request(_record_failure)
    app.after_request(lambda response: _add_headers(state, response))
    return app


def _name_route(request: flask.Request | None = None) -> None:
    request = flask.request
    span = request.environ.get(SPAN_KEY)
    rule = request.url_rule
    if span is not None and rule is not None:
        name_route(span, request.method, rule.rule)


def _record_failure(exc: BaseException | None) -> None:
    # An exception Flask turned into a 500: the span records it, once.
    if exc is None:
        return
    environ = flask.request.environ
    span = environ.get(SPAN_KEY)
    if span is not None:
        fail_span(span, exc)
        mark_failed(environ, exc)


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
