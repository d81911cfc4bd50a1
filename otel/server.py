"""The server span of a WSGI request, in HTTP semantic conventions.

`ServerSpans` is the outermost WSGI layer of an instrumented Flask app
(`otel.flask.instrument_flask` puts it there). For each request it:

- continues the inbound trace through the global propagator (tracegate's precedence:
  `traceparent`, `sentry-trace`, `X-Trace-ID`), or makes an INTERNAL child when a span
  is already active, as OpenTelemetry's own instrumentations do;
- starts a SERVER span `{method}` (renamed `{method} {route}` once Flask has matched a
  route) with the stable HTTP attributes: `http.request.method`, `url.scheme`,
  `url.path`, `url.query` (signature keys redacted), `server.address`, `server.port`,
  `network.protocol.version`, `client.address`, `user_agent.original`, then
  `http.route`, `http.response.status_code` and, on a 5xx or an exception,
  `error.type` and ERROR status. `OTEL_SEMCONV_STABILITY_OPT_IN=http/dup` adds the
  old names (`http.method`, `http.target`, `http.status_code`, ...) beside them;
- pins the request's trace context for Sentry, sampled or not, until it returns, and
  says whether the caller may decide sampling (`inbound_sampled_from`);
- gives the request its own Sentry scope (`otel.sentry_request.request_scope`);
- ends the span when the WSGI app returns, after Flask's teardown.

Requests whose full URL matches `excluded_urls` (comma-separated regular expressions,
as `OTEL_PYTHON_FLASK_EXCLUDED_URLS`) get no span and no response trace headers.

Why not opentelemetry-instrumentation-flask: with no span processor at all it adds
about 130 µs to a request that Flask serves in 45 (it collects the request's attributes
twice and reads its settings from the environment on every request); with this layer
and tracegate's response headers a request costs 50 µs more than bare Flask. It records
no HTTP metrics and captures no headers.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from contextvars import Token
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

from opentelemetry import context, propagate, trace
from opentelemetry.context import Context, get_value
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import SpanKind, Status, StatusCode

from otel.propagation import ADOPTED_TRACE_ID_KEY
from otel.provider import trust_inbound, untrust_reset
from otel.sentry import open_unit, pin, unpin
from otel.sentry_request import request_scope

__all__ = ["SPAN_KEY", "ServerSpans", "excluded", "fail_span", "mark_failed", "name_route"]

logger = logging.getLogger(__name__)

SPAN_KEY = "tracegate.server_span"  # in the WSGI environ, for the Flask hooks
_FAILED_KEY = "tracegate.server_error"

# Methods semantic conventions know; any other is reported as `_OTHER`.
_METHODS = frozenset(
    ("CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE", "QUERY")
)
# Query keys whose values semantic conventions say to redact by default.
_SECRET_KEYS = ("AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature")
_SECRET_QUERY = re.compile(r"(^|&)(AWSAccessKeyId|Signature|sig|X-Goog-Signature)=[^&]*")


class _EnvironGetter(Getter[dict[str, Any]]):
    """Reads request headers from a WSGI environ for the propagators."""

    def get(self, carrier: dict[str, Any], key: str) -> list[str] | None:
        value = carrier.get("HTTP_" + key.upper().replace("-", "_"))
        return None if value is None else [value]

    def keys(self, carrier: dict[str, Any]) -> list[str]:
        return [k[5:].lower().replace("_", "-") for k in carrier if k.startswith("HTTP_")]


_GETTER = _EnvironGetter()


def _query(query: str) -> str:
    if any(key in query for key in _SECRET_KEYS):
        return _SECRET_QUERY.sub(lambda m: f"{m.group(1)}{m.group(2)}=REDACTED", query)
    return query


def _host(environ: dict[str, Any]) -> tuple[str, int | None]:
    host = environ.get("HTTP_HOST")
    if not host:
        port = environ.get("SERVER_PORT")
        return str(environ.get("SERVER_NAME", "")), int(port) if port and port.isdigit() else None
    if host.startswith("["):  # [v6]:port
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = host.partition(":")
    if port.isdigit():
        return name, int(port)
    default = environ.get("SERVER_PORT")
    return name, int(default) if default and default.isdigit() else None


def _url(environ: dict[str, Any]) -> str:
    """The request's URL as Flask's `request.url` spells it, for the exclusion list."""
    host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME", "")
    path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
    query = environ.get("QUERY_STRING")
    url = f"{environ.get('wsgi.url_scheme', 'http')}://{host}{path}"
    return f"{url}?{query}" if query else url


def excluded(urls: str) -> re.Pattern[str] | None:
    """The exclusion list: comma-separated regular expressions, searched in the URL."""
    parts = [part.strip() for part in urls.split(",") if part.strip()]
    return re.compile("|".join(parts)) if parts else None


def _trusted(environ: dict[str, Any], networks: tuple[IPv4Network | IPv6Network, ...]) -> bool:
    # The peer itself, never X-Forwarded-For: a header is what an untrusted caller sets.
    try:
        address = ip_address(str(environ.get("REMOTE_ADDR", "")).split("%")[0])
    except ValueError:
        return False
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class ServerSpans:
    """WSGI middleware: one server span per request (see the module docstring)."""

    def __init__(
        self,
        wsgi_app: Callable[..., Any],
        tracer: trace.Tracer,
        *,
        excluded_urls: str = "",
        sampled_from: tuple[IPv4Network | IPv6Network, ...] = (),
        old_names: bool = False,
    ) -> None:
        self.wsgi_app = wsgi_app
        self.tracer = tracer
        self.excluded = excluded(excluded_urls)
        self.sampled_from = sampled_from
        self.old_names = old_names

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        with request_scope(environ):
            return self._serve(environ, start_response)

    def _serve(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        unit = open_unit()
        trust = trust_inbound(_trusted(environ, self.sampled_from)) if self.sampled_from else None
        try:
            if self.excluded is not None and self.excluded.search(_url(environ)):
                return self.wsgi_app(environ, start_response)
            try:
                span, token = self._start(environ)
            except Exception:  # telemetry never breaks a request: serve it untraced
                logger.exception("tracegate: could not start the server span")
                return self.wsgi_app(environ, start_response)
            try:
                return self.wsgi_app(environ, _recording(start_response, span, self.old_names))
            except BaseException as exc:
                if environ.get(_FAILED_KEY) is not exc:
                    fail_span(span, exc)
                raise
            finally:
                context.detach(token)
                span.end()
        finally:
            if trust is not None:
                untrust_reset(trust)
            unpin(unit)

    def _start(self, environ: dict[str, Any]) -> tuple[trace.Span, Token[Context]]:
        current = context.get_current()
        if trace.get_current_span(current).get_span_context().is_valid:
            parent: Context = current
            kind = SpanKind.INTERNAL
        else:
            parent = propagate.get_global_textmap().extract(environ, getter=_GETTER)
            kind = SpanKind.SERVER
        method = str(environ.get("REQUEST_METHOD", ""))
        attributes = self._attributes(environ, method)
        name = method if method in _METHODS else "HTTP"
        if get_value(ADOPTED_TRACE_ID_KEY, parent) is None:
            span = self.tracer.start_span(name, parent, kind, attributes=attributes)
        else:  # the id generator reads an X-Trace-ID's id from the attached context
            adopting = context.attach(parent)
            try:
                span = self.tracer.start_span(name, parent, kind, attributes=attributes)
            finally:
                context.detach(adopting)
        # Pinned before anything can fail: an unsampled span is the only record of it.
        parent_context = trace.get_current_span(parent).get_span_context()
        pin(span.get_span_context(), parent_context.span_id if parent_context.is_valid else None)
        environ[SPAN_KEY] = span
        return span, context.attach(trace.set_span_in_context(span, parent))

    def _attributes(self, environ: dict[str, Any], method: str) -> dict[str, Any]:
        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        host, port = _host(environ)
        attributes: dict[str, Any] = {
            "http.request.method": method if method in _METHODS else "_OTHER",
            "url.scheme": environ.get("wsgi.url_scheme", "http"),
            "url.path": path,
            "server.address": host,
        }
        if method not in _METHODS:
            attributes["http.request.method_original"] = method
        query = environ.get("QUERY_STRING")
        if query:
            attributes["url.query"] = _query(query)
        if port is not None:
            attributes["server.port"] = port
        protocol = str(environ.get("SERVER_PROTOCOL", ""))
        if protocol.startswith("HTTP/"):
            attributes["network.protocol.version"] = protocol[5:]
        peer = environ.get("REMOTE_ADDR")
        if peer:
            attributes["client.address"] = peer
        agent = environ.get("HTTP_USER_AGENT")
        if agent:
            attributes["user_agent.original"] = agent
        if self.old_names:
            attributes.update(_old_names(attributes, environ))
        return attributes


def _old_names(attributes: dict[str, Any], environ: dict[str, Any]) -> Iterable[tuple[str, Any]]:
    """The pre-1.21 HTTP attribute names, for `OTEL_SEMCONV_STABILITY_OPT_IN=http/dup`."""
    yield "http.method", environ.get("REQUEST_METHOD", "")
    yield "http.scheme", attributes["url.scheme"]
    yield "http.host", environ.get("HTTP_HOST") or attributes["server.address"]
    yield "http.server_name", environ.get("SERVER_NAME", "")
    query = attributes.get("url.query")
    yield "http.target", attributes["url.path"] + (f"?{query}" if query else "")
    for old, new in (
        ("net.host.name", "server.address"),
        ("net.host.port", "server.port"),
        ("http.flavor", "network.protocol.version"),
        ("net.peer.ip", "client.address"),
        ("http.user_agent", "user_agent.original"),
    ):
        if new in attributes:
            yield old, attributes[new]


def _recording(
    start_response: Callable[..., Any], span: trace.Span, old_names: bool
) -> Callable[..., Any]:
    def record(status: str, headers: Any, exc_info: Any = None) -> Any:
        try:
            code = int(status[:3])
        except ValueError:
            code = 0
        if code and span.is_recording():
            span.set_attribute("http.response.status_code", code)
            if old_names:
                span.set_attribute("http.status_code", code)
            if code >= 500:
                _fail_quietly(span, str(code))
        return start_response(status, headers, exc_info)

    return record


def _fail_quietly(span: trace.Span, error_type: str) -> None:
    # What an error handler (or a recorded exception) already said stays.
    attributes = getattr(span, "attributes", None) or {}
    if "error.type" not in attributes:
        span.set_attribute("error.type", error_type)
    status = getattr(span, "status", None)
    if status is None or status.status_code is StatusCode.UNSET:
        span.set_status(Status(StatusCode.ERROR))


def name_route(span: trace.Span, method: str, route: str) -> None:
    """Name the span after the route Flask matched, and record it."""
    if span.is_recording():
        span.set_attribute("http.route", route)
        span.update_name(f"{method if method in _METHODS else 'HTTP'} {route}")


def fail_span(span: trace.Span, exc: BaseException) -> None:
    """Record an exception that failed the request: its event, `error.type`, ERROR."""
    if not span.is_recording():
        return
    span.record_exception(exc)
    span.set_attribute("error.type", type(exc).__qualname__)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def mark_failed(environ: dict[str, Any], exc: BaseException) -> None:
    """The Flask teardown recorded `exc`; the middleware must not record it again."""
    environ[_FAILED_KEY] = exc
