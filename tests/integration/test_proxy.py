"""The traced proxy, end to end over real sockets: a client speaks HTTP to the gateway
(werkzeug's threaded server), the gateway to a real upstream `http.server` that records
what it received, and the real OTLP/HTTP exporter to the local OTLP receiver.

Every test asserts on what a peer received: the upstream's record of the request, the
client's view of the response, the exported spans, or the CLI's exit status."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from werkzeug.serving import BaseWSGIServer, make_server

from gateway.settings import ConfigError, Settings
from tests.harness import Gateway, GatewayFactory
from tests.peers.base import Collector, free_port
from tests.peers.otlp import OTLPReceiver
from tests.peers.spans import ReceivedSpan

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_UUID = "4bf92f35-77b3-4da6-a3ce-929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"
MIB = 1024 * 1024
PIECE = 64 * 1024


# --- the upstream peer -------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One request as the upstream read it off the wire."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    framing: str  # "length", "chunked" or "none"
    size: int
    sha256: str
    complete: bool
    client_port: int

    def header(self, name: str) -> str | None:
        values = self.all(name)
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    @property
    def names(self) -> set[str]:
        return {key.lower() for key, _ in self.headers}


class Upstream:
    """A threaded HTTP/1.1 server on 127.0.0.1 that records every request it reads.

    It answers by the last path segment: `hang` never answers (until the test ends),
    `download?size=N&pause=S` streams N bytes chunked with a pause after the first
    piece, `truncated` hangs up mid-body, `status?code=N` answers N; anything else gets
    a small JSON body and a set of headers a proxy must strip or keep.
    """

    def __init__(self) -> None:
        self.received: Collector[Received] = Collector()
        self.released = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def requests(self) -> list[Received]:
        return self.received.snapshot()

    def only(self) -> Received:
        requests = self.requests
        assert len(requests) == 1, requests
        return requests[0]

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_one_request(self) -> None:
                try:
                    super().handle_one_request()
                except ConnectionError:
                    self.close_connection = True

            def do_request(self) -> None:
                framing, size, digest, complete = self._read_body()
                upstream.received.add(
                    Received(
                        method=self.command,
                        target=self.path,
                        headers=list(self.headers.items()),
                        framing=framing,
                        size=size,
                        sha256=digest,
                        complete=complete,
                        client_port=self.client_address[1],
                    )
                )
                if not complete:
                    self.close_connection = True
                    return
                url = urlsplit(self.path)
                query = parse_qs(url.query)
                endpoint = url.path.rsplit("/", 1)[-1]
                if endpoint == "hang":
                    upstream.released.wait(30)
                    self.close_connection = True
                elif endpoint == "truncated":  # promises more than it sends, then hangs up
                    self.send_response(200)
                    self.send_header("Content-Length", "100000")
                    self.end_headers()
                    self.wfile.write(b"z" * 1000)
                    self.close_connection = True
                elif endpoint == "download":
                    self._download(int(query["size"][0]), float(query.get("pause", ["0"])[0]))
                else:
                    code = int(query.get("code", ["200"])[0]) if endpoint == "status" else 200
                    self._answer(code)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_request

            def _read_body(self) -> tuple[str, int, str, bool]:
                digest = hashlib.sha256()
                size = 0
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    while True:
                        line = self.rfile.readline()
                        if not line:
                            return "chunked", size, digest.hexdigest(), False
                        length = int(line.split(b";")[0].strip(), 16)
                        if length == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass  # trailers
                            return "chunked", size, digest.hexdigest(), True
                        piece = self.rfile.read(length)
                        digest.update(piece)
                        size += len(piece)
                        if len(piece) < length or self.rfile.read(2) != b"\r\n":
                            return "chunked", size, digest.hexdigest(), False
                if self.headers.get("Content-Length") is None:
                    return "none", 0, digest.hexdigest(), True
                remaining = int(self.headers["Content-Length"])
                while remaining:
                    piece = self.rfile.read(min(PIECE, remaining))
                    if not piece:
                        return "length", size, digest.hexdigest(), False
                    digest.update(piece)
                    size += len(piece)
                    remaining -= len(piece)
                return "length", size, digest.hexdigest(), True

            def _answer(self, code: int) -> None:
                body = json.dumps({"target": self.path}).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Upstream", "yes")
                self.send_header("Set-Cookie", "a=1; Path=/")
                self.send_header("Set-Cookie", "b=2; Path=/")
                self.send_header("Connection", "X-Hop-Response")
                self.send_header("X-Hop-Response", "secret")
                self.send_header("Keep-Alive", "timeout=5, max=7")
                self.send_header("Proxy-Authenticate", 'Basic realm="upstream"')
                self.send_header("Trailer", "X-Checksum")
                self.send_header("traceresponse", f"00-{'f' * 32}-{'e' * 16}-01")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _download(self, size: int, pause: float) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for index, piece in enumerate(pattern(size)):
                    self.wfile.write(b"%x\r\n%b\r\n" % (len(piece), piece))
                    if index == 0 and pause:
                        self.wfile.flush()
                        time.sleep(pause)
                self.wfile.write(b"0\r\n\r\n")

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        return Handler


def pattern(size: int) -> Iterator[bytes]:
    """`size` deterministic bytes in 64 KiB pieces, made as they are needed."""
    index = 0
    while size > 0:
        piece = (hashlib.sha256(index.to_bytes(8, "big")).digest() * (PIECE // 32))[:size]
        size -= len(piece)
        index += 1
        yield piece


def pattern_digest(size: int) -> str:
    digest = hashlib.sha256()
    for piece in pattern(size):
        digest.update(piece)
    return digest.hexdigest()


class Peak:
    """How far this process's resident memory rose above where it started."""

    def __init__(self) -> None:
        self.start = _status_kib("VmRSS")
        self.bytes = -1

    def take(self) -> None:
        self.bytes = (_status_kib("VmHWM") - self.start) * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


@contextmanager
def peak_rss() -> Iterator[Peak]:
    """The high-water mark of resident memory (client, gateway and upstream together).

    Linux resets it on "5" written to clear_refs. (Not tracemalloc: stopping it while
    other threads allocate crashes CPython 3.11.) Taken (`Peak.take`) before the client
    closes its connection: werkzeug's development server then drains the socket into a
    10 MB buffer, which is not the proxy's doing.
    """
    Path("/proc/self/clear_refs").write_text("5")
    yield Peak()


# --- the gateway, served, and a client ---------------------------------------------------


@dataclass
class Served:
    gateway: Gateway
    port: int

    def flush(self) -> None:
        self.gateway.flush()


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def error(self) -> dict[str, Any]:
        envelope: dict[str, Any] = json.loads(self.body)["error"]
        return envelope


def call(
    port: int,
    method: str,
    target: str,
    headers: dict[str, str] | None = None,
    body: bytes | Iterator[bytes] | None = None,
    *,
    chunked: bool = False,
    sink: Callable[[bytes], None] | None = None,
    before_close: Callable[[], None] | None = None,
) -> Reply:
    """One request over a fresh connection; a `sink` gets the body piece by piece.

    `before_close` runs after the response is read, while the connection is still open.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.connect()
    # http.client closes the socket as soon as a `Connection: close` response is read;
    # this second descriptor keeps the connection open until `before_close` has run.
    keeper = connection.sock.dup()
    try:
        connection.request(method, target, body=body, headers=headers or {}, encode_chunked=chunked)
        response = connection.getresponse()
        pieces = []
        while piece := response.read(PIECE):
            if sink is not None:
                sink(piece)
            else:
                pieces.append(piece)
        if before_close is not None:
            before_close()
        return Reply(response.status, response.getheaders(), b"".join(pieces))
    finally:
        keeper.close()
        connection.close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    peer = Upstream()
    yield peer
    peer.stop()


@pytest.fixture
def serve(make_gateway: GatewayFactory) -> Iterator[Callable[..., Served]]:
    servers: list[BaseWSGIServer] = []

    def start(**env: str) -> Served:
        gateway = make_gateway(**env)
        server = make_server("127.0.0.1", 0, gateway.app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return Served(gateway, server.server_port)

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def _spans(otlp: OTLPReceiver, kind: str) -> Callable[[], list[ReceivedSpan]]:
    return lambda: [s for s in otlp.spans if s.trace_id_hex == TRACE and s.kind_name == kind]


def _client_and_server(otlp: OTLPReceiver) -> tuple[ReceivedSpan, ReceivedSpan]:
    client = otlp.wait_for_span(lambda s: s.trace_id_hex == TRACE and s.kind_name == "CLIENT")
    server = otlp.wait_for_span(lambda s: s.trace_id_hex == TRACE and s.kind_name == "SERVER")
    return client, server


# --- forwarding ---------------------------------------------------------------------------


def test_get_with_query_reaches_the_upstream_inside_the_inbound_trace(
    serve: Callable[..., Served], upstream: Upstream, otlp_receiver: OTLPReceiver
) -> None:
    served = serve(TRACEGATE_UPSTREAMS=f"billing={upstream.url}/base/")
    query = "b=2&a=1&a=%20x&empty=&sig=s3cret&caf%C3%A9=%E2%82%AC"
    reply = call(
        served.port,
        "GET",
        f"/v1/proxy/billing/invoices/42?{query}",
        {
            "traceparent": TRACEPARENT,
            "tracestate": "vendor=opaque",
            "baggage": "tenant=acme",
            "sentry-trace": f"{'1' * 32}-{'2' * 16}-0",  # loses to traceparent, is replaced
        },
    )
    served.flush()

    assert reply.status == 200
    assert json.loads(reply.body) == {"target": f"/base/invoices/42?{query}"}
    received = upstream.only()
    assert (received.method, received.target) == ("GET", f"/base/invoices/42?{query}")
    assert received.framing == "none"

    client, server = _client_and_server(otlp_receiver)
    assert server.parent_span_id_hex == PARENT
    assert client.parent_span_id_hex == server.span_id_hex
    # The upstream continues the trace from the CLIENT span, with one sampled decision.
    assert received.all("traceparent") == [f"00-{TRACE}-{client.span_id_hex}-01"]
    assert received.all("tracestate") == ["vendor=opaque"]
    assert received.all("sentry-trace") == [f"{TRACE}-{client.span_id_hex}-1"]
    members = dict(m.split("=", 1) for m in received.all("baggage")[0].split(","))
    assert members["tenant"] == "acme"
    assert members["sentry-trace_id"] == TRACE and members["sentry-sampled"] == "true"
    # The client gets the gateway's trace headers, not the upstream's.
    assert reply.header("traceresponse") == f"00-{TRACE}-{server.span_id_hex}-01"
    assert reply.header("X-Trace-ID") == TRACE_UUID

    port = int(upstream.url.rsplit(":", 1)[1])
    assert client.name == "GET billing"
    assert client.attributes == {
        "http.request.method": "GET",
        "url.full": f"{upstream.url}/base/invoices/42?"
        "b=2&a=1&a=+x&empty=&sig=REDACTED&caf%C3%A9=%E2%82%AC",
        "server.address": "127.0.0.1",
        "server.port": port,
        "http.response.status_code": 200,
        "tracegate.upstream": "billing",
    }
    assert client.status_name == "UNSET"


@pytest.mark.parametrize(
    "path", ["/v1/proxy/billing/api/traces", "/v1/proxy/billing/x?next=/healthz"]
)
def test_paths_naming_the_untraced_routes_are_still_traced(
    path: str, serve: Callable[..., Served], upstream: Upstream, otlp_receiver: OTLPReceiver
) -> None:
    served = serve(TRACEGATE_UPSTREAMS=f"billing={upstream.url}")
    # The gateway's own health check makes no span ...
    assert call(served.port, "GET", "/healthz", {"traceparent": TRACEPARENT}).status == 200
    # ... but a proxied path that merely contains such a name continues the trace.
    assert call(served.port, "GET", path, {"traceparent": TRACEPARENT}).status == 200
    served.flush()
    client, server = _client_and_server(otlp_receiver)
    assert server.parent_span_id_hex == PARENT
    assert upstream.only().all("traceparent") == [f"00-{TRACE}-{client.span_id_hex}-01"]
    exported = sorted(s.name for s in otlp_receiver.spans if s.trace_id_hex == TRACE)
    assert exported == sorted([client.name, server.name])  # and none for /healthz


def test_untrusted_upstream_gets_the_trace_but_no_baggage(
    serve: Callable[..., Served], upstream: Upstream
) -> None:
    served = serve(
        TRACEGATE_UPSTREAMS=f"internal={upstream.url},partner={upstream.url}",
        TRACEGATE_UNTRUSTED_UPSTREAMS="partner",
    )
    sent = {"traceparent": TRACEPARENT, "tracestate": "vendor=opaque", "baggage": "tenant=acme"}
    assert call(served.port, "GET", "/v1/proxy/internal/a", sent).status == 200
    assert call(served.port, "GET", "/v1/proxy/partner/b", sent).status == 200
    inside, outside = upstream.requests
    assert "tenant=acme" in (inside.header("baggage") or "")
    assert "sentry-trace_id=" in (inside.header("baggage") or "")
    assert outside.all("baggage") == []
    for name in ("traceparent", "sentry-trace"):
        assert TRACE in (outside.header(name) or ""), name
    assert outside.all("tracestate") == ["vendor=opaque"]


def test_unsampled_trace_is_propagated_but_not_exported(
    serve: Callable[..., Served], upstream: Upstream, otlp_receiver: OTLPReceiver
) -> None:
    served = serve(TRACEGATE_UPSTREAMS=f"billing={upstream.url}")
    reply = call(
        served.port, "GET", "/v1/proxy/billing/x", {"traceparent": f"00-{TRACE}-{PARENT}-00"}
    )
    assert reply.status == 200
    received = upstream.only()
    traceparent = received.header("traceparent") or ""
    assert traceparent.startswith(f"00-{TRACE}-") and traceparent.endswith("-00")
    span_id = traceparent.split("-")[2]
    assert span_id != PARENT
    assert received.header("sentry-trace") == f"{TRACE}-{span_id}-0"
    assert "sentry-sampled=false" in (received.header("baggage") or "")
    # A sampled marker request proves the exporter was working meanwhile.
    call(
        served.port,
        "GET",
        "/v1/proxy/billing/marker",
        {"traceparent": f"00-{'3' * 32}-{PARENT}-01"},
    )
    served.flush()
    otlp_receiver.wait_for_span(lambda s: s.trace_id_hex == "3" * 32 and s.kind_name == "CLIENT")
    assert not [s for s in otlp_receiver.spans if s.trace_id_hex == TRACE]


def test_post_streams_a_multi_megabyte_body_to_the_upstream(
    serve: Callable[..., Served], upstream: Upstream, otlp_receiver: OTLPReceiver
) -> None:
    served = serve(
        TRACEGATE_UPSTREAMS=f"files={upstream.url}", TRACEGATE_MAX_BODY_BYTES=str(64 * MIB)
    )
    size = 12 * MIB + 123
    headers = {"traceparent": TRACEPARENT, "Content-Type": "application/octet-stream"}

    with peak_rss() as peak:
        chunked = call(
            served.port,
            "POST",
            "/v1/proxy/files/up",
            headers,
            pattern(size),
            chunked=True,
            before_close=peak.take,
        )
    headers["Content-Length"] = str(size)
    sized = call(served.port, "PUT", "/v1/proxy/files/up", headers, pattern(size))

    assert chunked.status == sized.status == 200
    first, second = upstream.requests
    # Exactly the bytes, framed as the client framed them.
    assert (first.method, first.framing, first.size) == ("POST", "chunked", size)
    assert (second.method, second.framing, second.size) == ("PUT", "length", size)
    assert first.sha256 == second.sha256 == pattern_digest(size)
    assert second.header("Content-Length") == str(size)
    assert first.header("Content-Type") == "application/octet-stream"
    # Client, gateway and upstream together never held a fraction of the body.
    assert peak.bytes < 4 * MIB, f"peak {peak.bytes} bytes while relaying {size}"
    served.flush()
    clients = otlp_receiver.wait_for_spans(
        lambda s: s.trace_id_hex == TRACE and s.kind_name == "CLIENT", 2
    )
    assert {s.attributes["http.request.method"] for s in clients} == {"POST", "PUT"}


def test_large_response_streams_and_the_client_span_covers_it(
    serve: Callable[..., Served], upstream: Upstream, otlp_receiver: OTLPReceiver
) -> None:
    served = serve(TRACEGATE_UPSTREAMS=f"files={upstream.url}")
    size = 16 * MIB + 7
    digest = hashlib.sha256()
    with peak_rss() as peak:
        reply = call(
            served.port,
            "GET",
            f"/v1/proxy/files/download?size={size}&pause=0.4",
            {"traceparent": TRACEPARENT},
            sink=digest.update,
            before_close=peak.take,
        )

    assert reply.status == 200
    assert reply.header("Content-Type") == "application/octet-stream"
    assert digest.hexdigest() == pattern_digest(size)
    assert peak.bytes < 4 * MIB, f"peak {peak.bytes} bytes while relaying {size}"
    assert upstream.only().target == f"/download?size={size}&pause=0.4"
    served.flush()
    client, server = _client_and_server(otlp_receiver)
    # The upstream paused 0.4 s after the headers: the span lasted until the body was relayed,
    # after the server span (which ends when the view returns).
    assert client.duration_ns >= 0.4e9
    assert client.end_time_ns > server.end_time_ns
    assert client.attributes["http.response.status_code"] == 200


def test_end_to_end_headers_pass_and_hop_by_hop_headers_stay(
    serve: Callable[..., Served], upstream: Upstream
) -> None:
    served = serve(TRACEGATE_UPSTREAMS=f"billing={upstream.url}")
    reply = call(
        served.port,
        "POST",
        "/v1/proxy/billing/orders",
        {
            "traceparent": TRACEPARENT,
            "X-Trace-ID": "11111111-2222-3333-4444-555555555555",
            "Authorization": "Bearer upstream-token",
            "Cookie": "session=abc",
            "Accept": "application/json",
            "User-Agent": "checkout/1.0",
            "X-Custom": "kept",
            "Connection": "keep-alive, X-Hop-Request",
            "X-Hop-Request": "secret",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic cHJveHk6cHc=",
            "Proxy-Connection": "keep-alive",
            "TE": "trailers",
            "Trailer": "X-Checksum",
            "Upgrade": "h2c",
            "X-Forwarded-For": "203.0.113.7",
            "X-Forwarded-Host": "spoofed.example",
            "Content-Type": "application/json",
        },
        b'{"order": 1}',
    )

    assert reply.status == 200
    received = upstream.only()
    for name, value in {
        "Authorization": "Bearer upstream-token",  # no API keys: it is the upstream's
        "Cookie": "session=abc",
        "Accept": "application/json",
        "User-Agent": "checkout/1.0",
        "Accept-Encoding": "identity",  # http.client's; relayed as is
        "X-Custom": "kept",
        "Content-Type": "application/json",
        "Content-Length": "12",
        "Host": upstream.url.removeprefix("http://"),
        "X-Forwarded-For": "203.0.113.7, 127.0.0.1",
        "X-Forwarded-Proto": "http",
        "X-Forwarded-Host": f"127.0.0.1:{served.port}",
    }.items():
        assert received.all(name) == [value], name
    assert (received.framing, received.size) == ("length", 12)
    for name in (
        "x-hop-request",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
        "x-trace-id",
        "transfer-encoding",
    ):
        assert name not in received.names, name
    assert received.header("Connection") in (None, "keep-alive")

    assert reply.header("X-Upstream") == "yes"
    assert reply.header("Content-Type") == "application/json"
    assert reply.all("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
    for name in ("X-Hop-Response", "Keep-Alive", "Proxy-Authenticate", "Trailer"):
        assert reply.header(name) is None, name
    assert (reply.header("traceresponse") or "").startswith(f"00-{TRACE}-")
    assert reply.header("X-Trace-ID") == TRACE_UUID


def test_api_key_guards_the_proxy_and_never_reaches_the_upstream(
    serve: Callable[..., Served], upstream: Upstream
) -> None:
    served = serve(TRACEGATE_UPSTREAMS=f"billing={upstream.url}", TRACEGATE_API_KEYS="k1,k2")
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        denied = call(served.port, "GET", "/v1/proxy/billing/x", headers)
        assert denied.status == 401 and denied.error["code"] == "unauthorized"
    assert upstream.requests == []

    ok = call(served.port, "GET", "/v1/proxy/billing/x", {"Authorization": "Bearer k2"})
    assert ok.status == 200
    received = upstream.only()
    assert "authorization" not in received.names
    assert "user-agent" not in received.names  # the client sent none: urllib3's is not made up


def test_upstream_status_and_head_are_relayed(
    serve: Callable[..., Served], upstream: Upstream, otlp_receiver: OTLPReceiver
) -> None:
    served = serve(TRACEGATE_UPSTREAMS=f"billing={upstream.url}")
    missing = call(
        served.port, "GET", "/v1/proxy/billing/status?code=404", {"traceparent": TRACEPARENT}
    )
    head = call(served.port, "HEAD", "/v1/proxy/billing/x", {"traceparent": TRACEPARENT})
    assert missing.status == 404 and json.loads(missing.body) == {"target": "/status?code=404"}
    assert head.status == 200 and head.body == b""
    assert [r.method for r in upstream.requests] == ["GET", "HEAD"]
    served.flush()
    spans = otlp_receiver.wait_for_spans(
        lambda s: s.trace_id_hex == TRACE and s.kind_name == "CLIENT", 2
    )
    by_method = {s.attributes["http.request.method"]: s for s in spans}
    # HTTP client conventions: a 4xx answer makes the CLIENT span an error.
    assert by_method["GET"].status_name == "ERROR"
    assert by_method["GET"].attributes["error.type"] == "404"
    assert by_method["HEAD"].status_name == "UNSET"


# --- errors -------------------------------------------------------------------------------


def test_body_cut_off_by_the_upstream_is_cut_off_for_the_client(
    serve: Callable[..., Served], upstream: Upstream, otlp_receiver: OTLPReceiver
) -> None:
    served = serve(TRACEGATE_UPSTREAMS=f"billing={upstream.url}")
    # The status was already relayed: the client must see a short body, not a whole one.
    reply = call(served.port, "GET", "/v1/proxy/billing/truncated", {"traceparent": TRACEPARENT})
    assert reply.status == 200 and reply.header("Content-Length") == "100000"
    assert reply.body == b"z" * 1000  # then the gateway hung up too
    assert upstream.only().target == "/truncated"
    served.flush()
    client, _ = _client_and_server(otlp_receiver)
    assert client.status_name == "ERROR"
    assert client.attributes["error.type"] == "upstream_unavailable"
    assert client.attributes["http.response.status_code"] == 200


def test_unknown_upstream_is_404_and_nothing_is_sent(
    serve: Callable[..., Served], upstream: Upstream, otlp_receiver: OTLPReceiver
) -> None:
    served = serve(TRACEGATE_UPSTREAMS=f"billing={upstream.url}")
    reply = call(served.port, "GET", "/v1/proxy/shipping/x", {"traceparent": TRACEPARENT})
    assert reply.status == 404
    assert reply.error == {
        "code": "unknown_upstream",
        "message": "no upstream of that name is configured",
        "trace_id": TRACE,
    }
    assert reply.header("X-Trace-ID") == TRACE_UUID
    served.flush()
    otlp_receiver.wait_for_span(lambda s: s.trace_id_hex == TRACE and s.kind_name == "SERVER")
    assert _spans(otlp_receiver, "CLIENT")() == []
    assert upstream.requests == []


def test_closed_port_is_502_with_an_error_client_span(
    serve: Callable[..., Served], otlp_receiver: OTLPReceiver
) -> None:
    served = serve(TRACEGATE_UPSTREAMS=f"down=http://127.0.0.1:{free_port()}")
    reply = call(served.port, "GET", "/v1/proxy/down/x", {"traceparent": TRACEPARENT})
    assert reply.status == 502
    assert reply.error["code"] == "upstream_unavailable" and reply.error["trace_id"] == TRACE
    served.flush()
    client, server = _client_and_server(otlp_receiver)
    assert client.parent_span_id_hex == server.span_id_hex
    assert client.status_name == "ERROR"
    assert client.attributes["error.type"] == "upstream_unavailable"
    assert "http.response.status_code" not in client.attributes
    # The server span's convention is the Flask instrumentation's (old or stable names).
    status = server.attributes.get(
        "http.response.status_code", server.attributes.get("http.status_code")
    )
    assert status == 502


def test_hanging_upstream_is_504_within_its_own_timeout(
    serve: Callable[..., Served], upstream: Upstream, otlp_receiver: OTLPReceiver
) -> None:
    served = serve(
        TRACEGATE_UPSTREAMS=f"slow={upstream.url},patient={upstream.url}",
        TRACEGATE_PROXY_TIMEOUT_S="30",
        TRACEGATE_PROXY_TIMEOUTS="slow=0.5",
    )
    started = time.monotonic()
    reply = call(served.port, "GET", "/v1/proxy/slow/hang", {"traceparent": TRACEPARENT})
    elapsed = time.monotonic() - started

    assert reply.status == 504
    assert reply.error["code"] == "upstream_timeout" and reply.error["trace_id"] == TRACE
    assert 0.45 <= elapsed < 2.5, elapsed
    assert upstream.only().target == "/hang"  # it got the request and kept quiet
    served.flush()
    client, _ = _client_and_server(otlp_receiver)
    assert client.status_name == "ERROR"
    assert client.attributes["error.type"] == "upstream_timeout"
    assert client.attributes["tracegate.upstream"] == "slow"
    assert 0.45e9 <= client.duration_ns < 2.5e9


def test_default_timeout_applies_without_an_override(
    serve: Callable[..., Served], upstream: Upstream
) -> None:
    served = serve(TRACEGATE_UPSTREAMS=f"slow={upstream.url}", TRACEGATE_PROXY_TIMEOUT_S="0.3")
    started = time.monotonic()
    reply = call(served.port, "POST", "/v1/proxy/slow/hang", {}, b"payload")
    assert reply.status == 504 and time.monotonic() - started < 2.0
    received = upstream.only()
    assert (received.method, received.size, received.complete) == ("POST", 7, True)


@pytest.mark.parametrize(
    "target",
    [
        "/v1/proxy/billing/../admin",
        "/v1/proxy/billing/a/%2e%2e/%2E%2E/admin",
        "/v1/proxy/billing/..%2Fadmin",
        "/v1/proxy/billing/.",
        "/v1/proxy/billing/a/..%5C..%5Cadmin",
        "/v1/proxy/billing/..;x/admin",
        "/v1/proxy/billing/a/.%2e;/admin",
        "/v1/proxy/billing//{evil}/x",
    ],
)
def test_path_escapes_are_refused(
    serve: Callable[..., Served], upstream: Upstream, target: str
) -> None:
    evil = Upstream()
    try:
        served = serve(TRACEGATE_UPSTREAMS=f"billing={upstream.url}/api")
        reply = call(
            served.port,
            "GET",
            target.format(evil=evil.url.removeprefix("http://")),
            {"traceparent": TRACEPARENT},
        )
        assert reply.status == 400
        assert reply.error["code"] == "invalid_path" and reply.error["trace_id"] == TRACE
        assert upstream.requests == [] and evil.requests == []
    finally:
        evil.stop()


def test_paths_that_look_like_urls_stay_on_the_upstream(
    serve: Callable[..., Served], upstream: Upstream
) -> None:
    evil = Upstream()
    try:
        host = evil.url.removeprefix("http://")
        served = serve(TRACEGATE_UPSTREAMS=f"billing={upstream.url}/api")
        sent = {
            f"/v1/proxy/billing/%2F%2F{host}/x": f"/api/%2F%2F{host}/x",
            f"/v1/proxy/billing/http://{host}/x": f"/api/http://{host}/x",
            f"/v1/proxy/billing/https:%2F%2F{host}": f"/api/https:%2F%2F{host}",
            "/v1/proxy/billing/a%2Fb/c%3Fd?e=%2F..": "/api/a%2Fb/c%3Fd?e=%2F..",
            "/v1/proxy/billing/a//b/": "/api/a//b/",
            "/v1/proxy/billing/": "/api/",
            "/v1/proxy/billing": "/api",
            # Absolute-form request line: its host is the gateway's business, not the path's.
            f"http://{host}/v1/proxy/billing/y": "/api/y",
        }
        for target in sent:
            assert call(served.port, "GET", target).status == 200, target
        assert [r.target for r in upstream.requests] == list(sent.values())
        # Userinfo-looking upstream names are just unknown names.
        for name in (f"billing@{host}", f"billing:80@{host}"):
            assert call(served.port, "GET", f"/v1/proxy/{name}/x").status == 404
        assert evil.requests == []
    finally:
        evil.stop()


def test_body_over_the_limit_is_413_and_never_reaches_the_upstream_whole(
    serve: Callable[..., Served], upstream: Upstream, otlp_receiver: OTLPReceiver
) -> None:
    served = serve(TRACEGATE_UPSTREAMS=f"billing={upstream.url}", TRACEGATE_MAX_BODY_BYTES="1000")
    headers = {"traceparent": TRACEPARENT}
    sized = call(served.port, "POST", "/v1/proxy/billing/x", headers, b"x" * 5000)
    assert sized.status == 413 and sized.error["code"] == "request_entity_too_large"
    assert upstream.requests == []  # refused on Content-Length, before any connection

    chunked = call(
        served.port, "POST", "/v1/proxy/billing/x", headers, iter([b"y" * 700] * 4), chunked=True
    )
    assert chunked.status == 413 and chunked.error["code"] == "request_entity_too_large"
    assert chunked.error["trace_id"] == TRACE
    # The upstream saw the start of a chunked body that never ended: no complete request.
    (cut,) = upstream.received.wait_until(list, 1, 5.0, repr)
    assert cut.framing == "chunked" and not cut.complete and cut.size <= 1000
    served.flush()
    client = otlp_receiver.wait_for_span(lambda s: s.kind_name == "CLIENT")
    assert client.status_name == "ERROR" and client.attributes["error.type"] == "client_body"


def test_pools_are_per_process_after_a_fork(
    serve: Callable[..., Served], upstream: Upstream
) -> None:
    served = serve(TRACEGATE_UPSTREAMS=f"billing={upstream.url}")
    client = served.gateway.client
    assert client.get("/v1/proxy/billing/parent").status_code == 200
    pid = os.fork()
    if pid == 0:  # the child: its own pool, never the parent's kept-alive socket
        code = 1
        try:
            code = 0 if client.get("/v1/proxy/billing/child").status_code == 200 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert client.get("/v1/proxy/billing/parent-again").status_code == 200

    assert os.waitstatus_to_exitcode(status) == 0
    parent, child, again = upstream.requests
    assert (parent.target, child.target, again.target) == ("/parent", "/child", "/parent-again")
    assert again.client_port == parent.client_port  # the parent's pool kept its connection
    assert child.client_port != parent.client_port


# --- settings -----------------------------------------------------------------------------


def test_upstream_settings_from_environment_and_toml(tmp_path: Path) -> None:
    path = tmp_path / "tracegate.toml"
    path.write_text(
        'TRACEGATE_PROXY_TIMEOUTS = ["billing=2.5"]\n'
        "[upstreams]\n"
        'billing = "http://billing.internal:9000/api"\n'
        'search = "https://search.internal"\n'
    )
    settings = Settings.from_env(
        {
            "TRACEGATE_CONFIG": str(path),
            "TRACEGATE_UPSTREAMS": "search=http://search.local:8080",
            "TRACEGATE_PROXY_TIMEOUT_S": "7",
        }
    )
    assert {name: (u.url, u.timeout_s) for name, u in settings.upstreams.items()} == {
        "billing": ("http://billing.internal:9000/api", 2.5),
        "search": ("http://search.local:8080", 7.0),  # the environment wins
    }
    assert Settings.from_env({}).upstreams == {}


def test_malformed_upstream_settings_are_listed_together() -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(
            {
                "TRACEGATE_UPSTREAMS": ",".join(
                    [
                        "ftp=ftp://files.internal",
                        "nohost=http://",
                        "noequals",
                        "bad name=http://x.internal",
                        "creds=http://user:pw@x.internal",
                        "query=http://x.internal/?a=1",
                        "port=http://x.internal:99999",
                        "ok=http://x.internal",
                    ]
                ),
                "TRACEGATE_PROXY_TIMEOUT_S": "0",
                "TRACEGATE_PROXY_TIMEOUTS": "ok=soon,ghost=5,ftp=-1",
                "TRACEGATE_UNTRUSTED_UPSTREAMS": "ok,phantom",
            }
        )
    problems = raised.value.problems
    for expected in (
        "'ftp://files.internal' is not an http(s)://host URL",
        "nohost='http://' is not an http(s)://host URL",
        "'noequals' is not key=value",
        "'bad name' is not an upstream name",
        "creds: credentials in the URL are not supported",
        "query='http://x.internal/?a=1' must not have a query",
        "port='http://x.internal:99999' has an invalid port",
        "TRACEGATE_PROXY_TIMEOUT_S: must be a positive number of seconds",
        "TRACEGATE_PROXY_TIMEOUTS: ok='soon' is not a number of seconds",
        "TRACEGATE_PROXY_TIMEOUTS: 'ghost' is not a configured upstream",
        "TRACEGATE_PROXY_TIMEOUTS: ftp: must be a positive number",
        "TRACEGATE_UNTRUSTED_UPSTREAMS: 'phantom' is not a configured upstream",
    ):
        assert any(expected in problem for problem in problems), (expected, problems)
    assert len(problems) == 12, problems


def test_cli_exits_2_on_a_bad_upstream() -> None:
    tracegate = str(Path(sys.executable).with_name("tracegate"))
    result = subprocess.run(
        [tracegate, "serve"],
        env={"TRACEGATE_UPSTREAMS": "billing=billing.internal:9000", "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "TRACEGATE_UPSTREAMS: billing='billing.internal:9000'" in result.stderr
