"""A local OTLP/HTTP traces receiver for the real OTLPSpanExporter.

Owns ``OTLPReceiver``: a threaded HTTP server on 127.0.0.1 that accepts
``POST /v1/traces`` with ``application/x-protobuf`` bodies (plain or gzip/deflate
encoded), decodes them as ``ExportTraceServiceRequest``, stores the flattened spans
(``peers.spans.ReceivedSpan``) and answers with an empty ``ExportTraceServiceResponse``.
"""

from __future__ import annotations

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from .base import Faults, LoopbackHTTPServer, PeerContext, decode_body
from .spans import SpanInbox, spans_from_request

PROTOBUF = "application/x-protobuf"
TRACES_PATH = "/v1/traces"


class OTLPReceiver(SpanInbox, PeerContext):
    """Point ``OTEL_EXPORTER_OTLP_ENDPOINT`` at ``.endpoint`` (or an exporter at
    ``.traces_endpoint``) and read what arrived from ``.spans``."""

    def __init__(self, faults: Faults | None = None) -> None:
        super().__init__()
        self.request_headers: list[dict[str, str]] = []  # of each export request, in order
        handle = faults.wrap(self._handle) if faults is not None else self._handle
        self._http = LoopbackHTTPServer("otlp", handle)

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def endpoint(self) -> str:
        """Base URL, the value for OTEL_EXPORTER_OTLP_ENDPOINT."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def traces_endpoint(self) -> str:
        """Full traces URL: OTLPSpanExporter(endpoint=...), OTEL_EXPORTER_OTLP_TRACES_ENDPOINT."""
        return self.endpoint + TRACES_PATH

    def start(self) -> None:
        self._http.start()

    def stop(self) -> None:
        self._http.stop()

    def _handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        if path != TRACES_PATH:
            return 404, "text/plain", f"only {TRACES_PATH} is served".encode()
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type != PROTOBUF:
            return 415, "text/plain", f"expected {PROTOBUF}, got {content_type!r}".encode()
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(decode_body(body, headers.get("content-encoding")))
        except DecodeError as exc:
            raise ValueError(f"not an ExportTraceServiceRequest: {exc}") from exc
        self.request_headers.append(dict(headers))
        self._add(spans_from_request(request))
        return 200, PROTOBUF, ExportTraceServiceResponse().SerializeToString()
