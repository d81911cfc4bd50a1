"""`/v1/proxy/<upstream>/<path>`: forward a request to a configured upstream, traced.

Only upstreams named in configuration (`TRACEGATE_UPSTREAMS` or the TOML `[upstreams]`
table) are reachable; `<path>` is appended to the upstream's base URL and can never
change its scheme, host or port. The exchange runs in a CLIENT span, child of the
request's SERVER span; the upstream sees that span as the parent in `traceparent`, with
`tracestate`, `baggage` and `sentry-trace` from the same context.

- Method, query (verbatim), end-to-end headers and body go up; status, end-to-end
  headers and body come back. Bodies stream both ways in 64 KiB pieces: neither is
  ever held whole in memory. The CLIENT span ends when the response body has been
  relayed (or the client went away).
- Hop-by-hop headers (`Connection` and the names it lists, `Keep-Alive`, `Proxy-*`,
  `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`, `Host`, `Expect`) stay on their hop.
  Inbound trace headers (every field of the configured propagators, `X-Trace-ID`
  included) are replaced by the injected ones; the upstream's `traceresponse` and
  `X-Trace-ID` give way to the gateway's. `X-Forwarded-For` gets the client's address
  appended; `X-Forwarded-Proto` and `X-Forwarded-Host` are set to what the gateway saw.
- With `TRACEGATE_API_KEYS` set the route needs a bearer key, and the `Authorization`
  header that carried it is the gateway's: it is not forwarded.
- Errors are the JSON envelope: 404 `unknown_upstream`, 400 `invalid_path` (dot
  segments, also percent-encoded, or a path starting with `//`), 413 over
  `TRACEGATE_MAX_BODY_BYTES` (chunked bodies too), 502 `upstream_unavailable`, 504
  `upstream_timeout`. An upstream status is relayed as is.

Connections are pooled per process and created lazily: a pool made before a fork is
never used by the child (gunicorn preload, forking servers).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import flask
import urllib3
from flask.sansio.blueprints import BlueprintSetupState
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from urllib3.exceptions import HTTPError, NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.util import SKIP_HEADER
from werkzeug.exceptions import ClientDisconnected, HTTPException
from werkzeug.routing import PathConverter

import otel
from gateway.auth import require_api_key
from gateway.errors import ApiError
from gateway.settings import Settings, Upstream
from otel.flask import EXPOSE_HEADERS

__all__ = ["Proxy", "blueprint"]

logger = logging.getLogger(__name__)

blueprint = flask.Blueprint("proxy", __name__)

_CHUNK = 64 * 1024
# TRACE would echo the caller's headers (the gateway's key) back; CONNECT is a tunnel.
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "host"}
    | {"expect", "content-length"}  # the gateway frames each hop itself
)
_RESPONSE_TRACE_HEADERS = frozenset(name.lower() for name in EXPOSE_HEADERS)
# OpenTelemetry's list of query parameters whose values url.full must not show.
_SECRET_PARAMS = frozenset({"AWSAccessKeyId", "Signature", "sig", "X-Goog-Signature"})
# A raw request target keeps printable ASCII as sent; anything else is percent-encoded.
_TARGET_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))


@dataclass(frozen=True)
class _Route:
    """A configured upstream, taken apart once."""

    name: str
    scheme: str
    host: str
    port: int
    netloc: str
    base_path: str  # without a trailing slash; "" for the root
    timeout_s: float
    trusted: bool


class Proxy:
    """The proxy's per-app state, in `app.extensions["tracegate.proxy"]`."""

    def __init__(self, upstreams: Mapping[str, Upstream], pool_size: int) -> None:
        self.routes = {name: _route(name, upstream) for name, upstream in upstreams.items()}
        self.pool_size = max(1, pool_size)
        self._pools: tuple[int, urllib3.PoolManager] | None = None

    def pools(self) -> urllib3.PoolManager:
        """This process's pools: a forked child makes its own instead of sharing sockets.

        No lock (a lock held at fork time would stay held in the child): two threads
        racing on first use make two managers, and one is dropped.
        """
        current = self._pools
        pid = os.getpid()
        if current is None or current[0] != pid:
            manager = urllib3.PoolManager(
                num_pools=max(10, len(self.routes)), maxsize=self.pool_size, block=False
            )
            current = self._pools = (pid, manager)
        return current[1]


def _route(name: str, upstream: Upstream) -> _Route:
    parts = urlsplit(upstream.url)
    default_port = 443 if parts.scheme == "https" else 80
    return _Route(
        name=name,
        scheme=parts.scheme,
        host=parts.hostname or "",
        port=parts.port or default_port,
        netloc=parts.netloc,
        base_path=parts.path.rstrip("/"),
        timeout_s=upstream.timeout_s,
        trusted=upstream.trusted,
    )


class _AnyPath(PathConverter):
    # Also empty and leading-slash paths, so `_target` answers them with a clear 400.
    regex = ".*"
    part_isolating = False  # werkzeug would guess True: the regex has no "/"


def _init(state: BlueprintSetupState) -> None:
    app = state.app
    app.url_map.converters["proxy_path"] = _AnyPath
    settings: Settings = app.extensions["tracegate.settings"]
    app.extensions["tracegate.proxy"] = Proxy(settings.upstreams, settings.threads)


blueprint.record_once(_init)  # before the rules below: they need the converter
blueprint.before_request(require_api_key)


@blueprint.route("/v1/proxy/<upstream>", methods=_METHODS)
@blueprint.route("/v1/proxy/<upstream>/<proxy_path:path>", methods=_METHODS, merge_slashes=False)
def forward(upstream: str, path: str | None = None) -> flask.Response:
    proxy: Proxy = flask.current_app.extensions["tracegate.proxy"]
    route = proxy.routes.get(upstream)
    if route is None:
        raise ApiError(404, "unknown_upstream", "no upstream of that name is configured")
    request = flask.request
    target = route.base_path + _target(request.environ, upstream, path)
    query = _raw(request.environ.get("QUERY_STRING", ""))
    if query:
        target += "?" + query
    body, length = _body(request)  # over TRACEGATE_MAX_BODY_BYTES: 413 before any upstream
    headers = _request_headers(request, strip_authorization=bool(_api_keys()))
    telemetry: otel.Telemetry = flask.current_app.extensions["tracegate.telemetry"]
    span = telemetry.tracer(__name__).start_span(
        f"{request.method} {route.name}",
        kind=SpanKind.CLIENT,
        attributes={
            "http.request.method": request.method,
            "url.full": f"{route.scheme}://{route.netloc}{_redacted(target)}",
            "server.address": route.host,
            "server.port": route.port,
            "tracegate.upstream": route.name,
        },
    )
    carrier: dict[str, str] = {}
    otel.inject(carrier, context=trace.set_span_in_context(span))
    if not route.trusted:
        # Baggage holds what the caller and Sentry's dynamic sampling context carry
        # (tenant ids, release, public key): it stays inside the trust domain.
        carrier.pop("baggage", None)
    headers.update(carrier)
    timeout = urllib3.Timeout(connect=route.timeout_s, read=route.timeout_s)
    try:
        pool = proxy.pools().connection_from_host(route.host, route.port, route.scheme)
        upstream_response = pool.urlopen(
            request.method,
            target,
            body=body,
            headers=headers,
            chunked=body is not None and length is None,
            retries=False,  # the body is a stream: it cannot be sent twice
            redirect=False,  # a redirect is the client's to follow
            timeout=timeout,
            preload_content=False,
            decode_content=False,  # relay the bytes as they are, Content-Encoding and all
            release_conn=False,
        )
    except _ClientBodyError as error:
        _fail(span, "client_body", "the request body could not be relayed")
        cause = error.__cause__
        raise cause if isinstance(cause, HTTPException) else ClientDisconnected() from error
    except Urllib3Timeout as error:
        # NewConnectionError is a ConnectTimeoutError to urllib3: refused is not a timeout.
        if isinstance(error, NewConnectionError):
            raise _unavailable(span, route, error) from error
        _fail(span, "upstream_timeout", f"no answer within {route.timeout_s:g} s")
        raise ApiError(
            504, "upstream_timeout", f"upstream {route.name!r} did not answer in time"
        ) from error
    except (HTTPError, OSError) as error:
        raise _unavailable(span, route, error) from error
    except BaseException:
        span.end()
        raise
    status = upstream_response.status
    span.set_attribute("http.response.status_code", status)
    if status >= 400:  # HTTP client semantic conventions: 4xx and 5xx are errors
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))
    bodiless = request.method == "HEAD" or status < 200 or status in (204, 304)
    relay = _Relay(upstream_response, span, route, bodiless=bodiless)
    return _Relayed(relay, status=status, headers=_response_headers(upstream_response.headers))


def _api_keys() -> tuple[str, ...]:
    settings: Settings = flask.current_app.extensions["tracegate.settings"]
    return settings.api_keys


def _unavailable(span: trace.Span, route: _Route, error: Exception) -> ApiError:
    logger.warning("upstream %s unavailable: %s", route.name, type(error).__name__)
    _fail(span, "upstream_unavailable", type(error).__name__)
    return ApiError(502, "upstream_unavailable", f"upstream {route.name!r} cannot be reached")


def _fail(span: trace.Span, error_type: str, description: str) -> None:
    """End a CLIENT span that got no usable response. The exception is not recorded:
    the bridge would make each one a Sentry error, and an upstream outage is not ours."""
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR, description))
    span.end()


def _raw(value: str) -> str:
    # WSGI strings carry the request's bytes as latin-1; http.client wants printable ASCII.
    return quote(value.encode("latin-1", "replace"), safe=_TARGET_SAFE)


def _target(environ: Mapping[str, Any], upstream: str, path: str | None) -> str:
    """`/<path>` as the client spelled it (percent-encoding kept), or "" for no path.

    Taken from the raw request line when the server provides it (gunicorn's `RAW_URI`,
    `REQUEST_URI`), since `PATH_INFO` has `%2F` already decoded to `/`.
    """
    if path is None:
        return ""
    prefix = f"{environ.get('SCRIPT_NAME', '')}/v1/proxy/{upstream}".split("/")
    raw = str(environ.get("RAW_URI") or environ.get("REQUEST_URI") or "").split("?", 1)[0]
    if raw and not raw.startswith("/"):
        raw = urlsplit(raw).path  # absolute-form: the host in it is the gateway's
    segments = raw.split("/")
    if len(segments) > len(prefix) and [unquote(s) for s in segments[: len(prefix)]] == prefix:
        rest = ["", *segments[len(prefix) :]]
    else:
        rest = ["", *(quote(s, safe="!$&'()*+,;=:@") for s in path.split("/"))]
    if len(rest) > 2 and rest[1] == "":
        raise ApiError(400, "invalid_path", "the path must not start with '//'")
    for segment in rest:
        # `..;x` is `..` to servers that drop path parameters (Tomcat, Jetty, Spring).
        parts = unquote(segment).replace("\\", "/").split("/")
        if any(part.split(";", 1)[0] in (".", "..") for part in parts):
            raise ApiError(400, "invalid_path", "the path must not have '.' or '..' segments")
    return _raw("/".join(rest))


class _ClientBodyError(Exception):
    """Reading the client's body failed: over the size limit, or the client went away."""


def _body(request: flask.Request) -> tuple[Iterator[bytes] | None, int | None]:
    """The request body as a stream of pieces, and its length when the client sent one."""
    length = request.content_length
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    if length is None and not chunked:
        return None, None
    stream = request.stream  # raises 413 now when Content-Length is over the limit

    def pieces() -> Iterator[bytes]:
        while True:
            try:
                piece = stream.read(_CHUNK)
            except (HTTPException, OSError, ValueError) as error:
                # Not an OSError any more: urllib3 must not mistake it for the upstream's.
                raise _ClientBodyError(str(error)) from error
            if not piece:
                return
            yield piece

    return pieces(), length


def _listed(connection: str | None) -> set[str]:
    return {token.strip().lower() for token in (connection or "").split(",") if token.strip()}


def _request_headers(
    request: flask.Request, *, strip_authorization: bool
) -> urllib3.HTTPHeaderDict:
    drop = {*_HOP_BY_HOP, *_listed(request.headers.get("Connection"))}
    drop |= {field.lower() for field in propagate.get_global_textmap().fields}
    drop |= {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host"}
    if strip_authorization:
        drop.add("authorization")  # the gateway's key, not the upstream's credentials
    headers = urllib3.HTTPHeaderDict()
    for name, value in request.headers.items():
        lowered = name.lower()
        if lowered not in drop and not lowered.startswith("proxy-"):
            headers.add(name, value)
    if request.content_length is not None:
        headers["Content-Length"] = str(request.content_length)
    # urllib3 would add its own User-Agent and an Accept-Encoding the client never sent.
    for name in ("User-Agent", "Accept-Encoding"):
        if name not in headers:
            headers[name] = SKIP_HEADER
    chain = request.headers.get("X-Forwarded-For", "").strip()
    client = request.remote_addr or "unknown"
    headers["X-Forwarded-For"] = f"{chain}, {client}" if chain else client
    headers["X-Forwarded-Proto"] = request.scheme
    if request.host:
        headers["X-Forwarded-Host"] = request.host
    return headers


def _response_headers(upstream: urllib3.HTTPHeaderDict) -> list[tuple[str, str]]:
    drop = {*_HOP_BY_HOP, *_listed(upstream.get("Connection")), *_RESPONSE_TRACE_HEADERS}
    drop.discard("content-length")  # the body is relayed byte for byte: the length holds
    return [
        (name, value)
        for name, value in upstream.items()
        if name.lower() not in drop and not name.lower().startswith("proxy-")
    ]


def _redacted(target: str) -> str:
    path, sep, query = target.partition("?")
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(key in _SECRET_PARAMS for key, _ in pairs):
        return target
    kept = [(key, "REDACTED" if key in _SECRET_PARAMS else value) for key, value in pairs]
    return f"{path}{sep}{urlencode(kept)}"


class _Relayed(flask.Response):
    # No Content-Type of our own when the upstream sent none.
    default_mimetype = None


class _Relay:
    """The upstream's body as the WSGI response iterable; `close` ends the CLIENT span.

    A plain generator would not do: the WSGI layer never starts the iterator for HEAD,
    204 or 304, and closing an unstarted generator runs none of its cleanup.
    """

    def __init__(
        self,
        response: urllib3.BaseHTTPResponse,
        span: trace.Span,
        route: _Route,
        *,
        bodiless: bool,
    ) -> None:
        self._response = response
        self._bodiless = bodiless
        self._span = span
        self._route = route
        self._complete = False
        self._failed = False
        self._closed = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            for piece in self._response.stream(_CHUNK, decode_content=False):
                if piece:
                    yield piece
        except (HTTPError, OSError) as error:
            timed_out = isinstance(error, Urllib3Timeout)
            code = "upstream_timeout" if timed_out else "upstream_unavailable"
            self._failed = True
            self._span.set_attribute("error.type", code)
            self._span.set_status(Status(StatusCode.ERROR, "the response body broke off"))
            # Raising (not returning) makes the server cut the connection, so the client
            # sees a truncated body instead of a chunked one that looks complete.
            raise UpstreamBodyError(f"upstream {self._route.name!r}: {code}") from error
        self._complete = True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            if self._bodiless:
                self._response.drain_conn()  # nothing to read: the connection is reusable
            elif not self._complete:
                # Half-read: the connection cannot be reused.
                self._response.close()
                if not self._failed:
                    self._span.add_event("client went away before the body was relayed")
            self._response.release_conn()
        finally:
            self._span.end()


class UpstreamBodyError(Exception):
    """The upstream's response body broke off after its status was relayed."""
