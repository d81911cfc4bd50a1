"""A counting stand-in for Sentry and an OTLP collector, for the HTTP benchmark.

`Ingest` is one loopback HTTP/1.1 server per benchmark variant that answers every
path a variant may send to, parses what arrives and counts it:

- `POST /v1/traces`: OTLP/HTTP protobuf (`ExportTraceServiceRequest`), counted as
  `otlp_spans` (point `OTEL_EXPORTER_OTLP_ENDPOINT` at `.endpoint`);
- `POST /api/<project>/envelope/`: Sentry envelopes, parsed with the test peers'
  parser, counted as `transactions` (and the child spans inside them) and `events`;
- `POST /api/<project>/integration/otlp/v1/traces/`: Sentry's OTLP endpoint, which
  sentry-sdk's OTLPIntegration (and tracegate's OTLP mode) derive from the DSN;
  counted as `sentry_otlp_spans` only with an `X-Sentry-Auth` naming `.public_key`.

Unlike the test peers it keeps counts, not payloads, so a run of several hundred
thousand spans costs no memory, and it keeps connections alive as Sentry and
collectors do (the peers answer HTTP/1.0, one connection per export).
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.peers.base import LOOPBACK, LoopbackHTTPServer, PeerContext, decode_body
from tests.peers.envelope import parse_envelope

__all__ = ["Counts", "Ingest", "keep_alive"]

_ENVELOPE = re.compile(r"^/api/(?P<project>[^/]+)/envelope/?$")
_SENTRY_OTLP = re.compile(r"^/api/(?P<project>[^/]+)/integration/otlp/v1/traces/?$")
_PROTOBUF = "application/x-protobuf"


@dataclass(frozen=True)
class Counts:
    """What an `Ingest` accepted so far."""

    otlp_spans: int = 0
    transactions: int = 0
    transaction_spans: int = 0
    events: int = 0
    sentry_otlp_spans: int = 0
    # Transactions sentry-sdk itself reports it dropped (its client reports).
    sdk_dropped: int = 0
    requests: int = 0
    rejected: int = 0

    def minus(self, other: Counts) -> Counts:
        return Counts(**{name: getattr(self, name) - getattr(other, name) for name in _FIELDS})

    def plus(self, other: Counts) -> Counts:
        return Counts(**{name: getattr(self, name) + getattr(other, name) for name in _FIELDS})


_FIELDS = tuple(Counts.__dataclass_fields__)


class Ingest(PeerContext):
    """Sentry (envelopes and OTLP) and an OTLP collector on one loopback port."""

    def __init__(self, project_id: int = 42, public_key: str = "bench") -> None:
        self.project_id = project_id
        self.public_key = public_key
        self._lock = threading.Lock()
        self._counts: dict[str, int] = dict.fromkeys(_FIELDS, 0)
        self._http = LoopbackHTTPServer("bench-ingest", self.handle, keep_alive=True)
        # Why requests were refused, and how often, for the report.
        self.reasons: dict[str, int] = {}
        # Transactions sentry-sdk's client reports say it dropped, by reason.
        self.dropped: dict[str, int] = {}

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def endpoint(self) -> str:
        """The value for OTEL_EXPORTER_OTLP_ENDPOINT."""
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def dsn(self) -> str:
        return f"http://{self.public_key}@{LOOPBACK}:{self.port}/{self.project_id}"

    def counts(self) -> Counts:
        with self._lock:
            return Counts(**self._counts)

    def refusals(self) -> dict[str, int]:
        with self._lock:
            return dict(self.reasons)

    def sdk_drops(self) -> dict[str, int]:
        """Transactions sentry-sdk says it dropped, by reason."""
        with self._lock:
            return dict(self.dropped)

    def start(self) -> None:
        self._http.start()

    def stop(self) -> None:
        self._http.stop()

    def handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, bytes]:
        """Count one POST; returns the status, content type and response body."""
        try:
            raw = decode_body(body, headers.get("content-encoding"))
            if path == "/v1/traces":
                return self._otlp(raw, headers, "otlp_spans")
            if _ENVELOPE.match(path):
                return self._envelope(raw)
            if _SENTRY_OTLP.match(path):
                auth = headers.get("x-sentry-auth", "")
                if f"sentry_key={self.public_key}" not in auth:
                    return self._refuse(401, "Sentry OTLP without X-Sentry-Auth")
                return self._otlp(raw, headers, "sentry_otlp_spans")
            return self._refuse(404, f"unknown path {path}")
        except ValueError as error:
            return self._refuse(400, f"{path}: {type(error).__name__}")

    def _otlp(self, raw: bytes, headers: dict[str, str], counter: str) -> tuple[int, str, bytes]:
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type != _PROTOBUF:
            return self._refuse(415, f"OTLP as {content_type!r}")
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(raw)
        except DecodeError as error:
            raise ValueError(str(error)) from error
        spans = sum(
            len(scope.spans)
            for resource in request.resource_spans
            for scope in resource.scope_spans
        )
        self._add(requests=1, **{counter: spans})
        return 200, _PROTOBUF, ExportTraceServiceResponse().SerializeToString()

    def _envelope(self, raw: bytes) -> tuple[int, str, bytes]:
        envelope = parse_envelope(raw)
        transactions = children = events = dropped = 0
        for item in envelope.items:
            payload = item.json
            if item.type == "transaction" and payload is not None:
                transactions += 1
                children += len(payload.get("spans") or ())
            elif item.type == "event":
                events += 1
            elif item.type == "client_report" and payload is not None:
                dropped += self._client_report(payload)
        self._add(
            requests=1,
            transactions=transactions,
            transaction_spans=children,
            events=events,
            sdk_dropped=dropped,
        )
        return 200, "application/json", b"{}"

    def _client_report(self, payload: dict[str, Any]) -> int:
        # Only transactions: sentry-sdk reports each dropped one again as a "span".
        total = 0
        for discarded in payload.get("discarded_events") or ():
            if discarded.get("category") != "transaction":
                continue
            quantity = int(discarded.get("quantity") or 0)
            reason = str(discarded.get("reason"))
            with self._lock:
                self.dropped[reason] = self.dropped.get(reason, 0) + quantity
            total += quantity
        return total

    def _refuse(self, status: int, reason: str) -> tuple[int, str, bytes]:
        with self._lock:
            self._counts["requests"] += 1
            self._counts["rejected"] += 1
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
        return status, "text/plain", reason.encode()

    def _add(self, **amounts: int) -> None:
        with self._lock:
            for name, amount in amounts.items():
                self._counts[name] += amount


def keep_alive(peer: Any) -> None:
    """Make a test peer (`tests.peers`) answer in HTTP/1.1 and keep its connections,
    with TCP_NODELAY, as Sentry and collectors do: the peers' HTTP/1.0 would add a
    TCP connect to every envelope and export."""
    handler = peer._http._server.RequestHandlerClass  # made for this server alone
    handler.protocol_version = "HTTP/1.1"
    handler.disable_nagle_algorithm = True
