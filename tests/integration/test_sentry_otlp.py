"""TRACEGATE_SENTRY_TRACES=otlp: sampled spans go, batched, to Sentry's OTLP endpoint
derived from the DSN (beside the collector), no transaction envelope is built, and
every Sentry error still links to the trace — asserted on what real peers received.

The Sentry stand-in is one HTTP server behind the DSN that takes envelopes at
`/api/<project>/envelope/` (as `EnvelopeReceiver` does) and OTLP/HTTP at
`/api/<project>/integration/otlp/v1/traces/`, recording each OTLP request's headers.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from otel.provider import sentry_otlp_target
from tests.harness import GatewayFactory, gateways
from tests.peers.base import Collector, Faults, decode_body
from tests.peers.envelope import EnvelopeReceiver
from tests.peers.otlp import OTLPReceiver
from tests.peers.spans import SpanInbox, spans_from_request

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
OTLP_PATH = re.compile(r"^/api/(?P<project>[^/]+)/integration/otlp/v1/traces/$")


@dataclass(frozen=True)
class OTLPRequest:
    path: str
    headers: dict[str, str]


class SentryWithOTLP(EnvelopeReceiver):
    """Sentry's ingest stand-in that also takes OTLP/HTTP at Sentry's OTLP path."""

    def __init__(self, faults: Faults | None = None) -> None:
        self.otlp = SpanInbox()
        self.otlp_requests: Collector[OTLPRequest] = Collector()
        self._otlp_faults = faults
        super().__init__()

    def _handle(self, path: str, headers: dict[str, str], body: bytes) -> tuple[Any, ...]:
        if not OTLP_PATH.match(path):
            return super()._handle(path, headers, body)
        self.otlp_requests.add(OTLPRequest(path, headers))
        if self._otlp_faults is not None and self._otlp_faults.mode == "fail":
            return self._otlp_faults.status, "text/plain", b"fault injected"
        content_type = headers.get("content-type", "").split(";", 1)[0].strip()
        if content_type != "application/x-protobuf":
            return 415, "text/plain", b"expected application/x-protobuf"
        request = ExportTraceServiceRequest()
        request.ParseFromString(decode_body(body, headers.get("content-encoding")))
        self.otlp._add(spans_from_request(request))
        return 200, "application/x-protobuf", ExportTraceServiceResponse().SerializeToString()


@pytest.fixture
def sentry() -> Iterator[SentryWithOTLP]:
    with SentryWithOTLP() as receiver:
        yield receiver


@pytest.fixture
def make_gateway(sentry: SentryWithOTLP, otlp_receiver: OTLPReceiver) -> Iterator[GatewayFactory]:
    env = {
        "SENTRY_DSN": sentry.dsn,
        "TRACEGATE_SENTRY_TRACES": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
    }
    with gateways(env) as make:
        yield make


def _tracegate_version() -> str:
    from importlib.metadata import version

    return version("tracegate")


def test_spans_go_to_sentrys_otlp_endpoint_and_errors_stay_linked(
    make_gateway: GatewayFactory,
    sentry: SentryWithOTLP,
    otlp_receiver: OTLPReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Headers meant for the collector (OpenTelemetry's exporter reads them from the
    # environment) must not reach Sentry.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer collector-secret")
    gateway = make_gateway()
    headers = {"traceparent": f"00-{TRACE}-{PARENT}-01"}
    assert gateway.client.get("/example", headers=headers).status_code == 200
    assert gateway.client.get("/example/error", headers=headers).status_code == 500
    gateway.flush()

    # The spans arrived at Sentry's OTLP path, with Sentry's auth header ...
    server = sentry.otlp.wait_for_span(lambda s: s.name == "GET /example")
    failed = sentry.otlp.wait_for_span(lambda s: s.name == "GET /example/error")
    assert server.trace_id_hex == failed.trace_id_hex == TRACE
    assert server.parent_span_id_hex == PARENT and server.kind_name == "SERVER"
    request = sentry.otlp_requests.snapshot()[0]
    assert request.path == f"/api/{sentry.project_id}/integration/otlp/v1/traces/"
    assert request.headers["x-sentry-auth"] == (
        f"Sentry sentry_key={sentry.public_key}, sentry_version=7, "
        f"sentry_client=tracegate/{_tracegate_version()}"
    )
    assert "authorization" not in request.headers
    # ... and the collector got the same spans, with its own credentials.
    collected = otlp_receiver.wait_for_span(lambda s: s.name == "GET /example")
    assert collected.span_id_hex == server.span_id_hex
    assert otlp_receiver.request_headers[0]["authorization"] == "Bearer collector-secret"

    # No transaction envelope, but the message and the error, linked to the trace.
    message = sentry.wait_for(lambda e: e.get("logentry") or e.get("message"), item_type="event")
    error = sentry.wait_for(lambda e: "exception" in e, item_type="event")
    assert error["exception"]["values"][-1]["type"] == "ExampleError"
    assert error["contexts"]["trace"]["trace_id"] == TRACE
    assert error["contexts"]["trace"]["span_id"] == failed.span_id_hex
    assert message["contexts"]["trace"]["span_id"] == server.span_id_hex
    assert server.attributes["sentry.event_id"] == message["event_id"]
    headers_of = [
        e.headers for e in sentry.envelopes if e.headers.get("event_id") == error["event_id"]
    ]
    assert headers_of and headers_of[0]["trace"]["trace_id"] == TRACE
    assert sentry.transactions() == []


def test_a_span_exception_sentry_never_saw_still_becomes_an_error(
    make_gateway: GatewayFactory, sentry: SentryWithOTLP
) -> None:
    gateway = make_gateway()
    telemetry = gateway.telemetry
    tracer = telemetry.tracer("tests")
    with tracer.start_as_current_span("background work") as span:
        span.record_exception(ValueError("nobody caught this"))
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR))
    trace_hex = f"{span.get_span_context().trace_id:032x}"
    gateway.flush()
    error = sentry.wait_for(lambda e: "exception" in e, item_type="event")
    assert error["exception"]["values"][0]["type"] == "ValueError"
    assert error["contexts"]["trace"]["trace_id"] == trace_hex
    sentry.otlp.wait_for_span(lambda s: s.name == "background work")
    assert sentry.transactions() == []


def test_unsampled_traces_send_nothing_to_sentrys_otlp_endpoint(
    make_gateway: GatewayFactory, sentry: SentryWithOTLP
) -> None:
    gateway = make_gateway()
    headers = {"traceparent": f"00-{TRACE}-{PARENT}-00"}
    assert gateway.client.get("/example/error", headers=headers).status_code == 500
    assert gateway.client.get("/example").status_code == 200  # sampled, a new trace
    gateway.flush()
    error = sentry.wait_for(lambda e: "exception" in e, item_type="event")
    assert error["contexts"]["trace"]["trace_id"] == TRACE  # linked all the same
    sentry.otlp.wait_for_span(lambda s: s.name == "GET /example")
    assert [s for s in sentry.otlp.spans if s.trace_id_hex == TRACE] == []


def test_failed_exports_to_sentry_are_counted() -> None:
    faults = Faults()
    faults.fail(503)
    with SentryWithOTLP(faults) as sentry, gateways({}) as make:
        gateway = make(
            SENTRY_DSN=sentry.dsn,
            TRACEGATE_SENTRY_TRACES="otlp",
            OTEL_EXPORTER_OTLP_TIMEOUT="300",  # ms: retries give up quickly
        )
        assert gateway.client.get("/example").status_code == 200
        gateway.telemetry.flush(5.0)
        counters = gateway.telemetry.counters
        assert sentry.otlp_requests.snapshot()  # it was tried ...
        assert counters.get("spans_dropped", exporter="sentry_otlp", reason="export_failed") >= 1
        metrics = gateway.client.get("/metrics").get_data(as_text=True)
        assert 'exporter="sentry_otlp"' in metrics
        faults.heal()
        assert gateway.client.get("/example").status_code == 200
        gateway.flush()
        sentry.otlp.wait_for_span(lambda s: s.name == "GET /example")  # ... and resumes


@pytest.mark.parametrize("hung", ["sentry", "collector"])
def test_a_destination_that_never_answers_holds_up_neither_the_other_nor_the_app(
    hung: str, silent_server: str, sentry: SentryWithOTLP, otlp_receiver: OTLPReceiver
) -> None:
    # One batch processor encodes each batch once for both destinations (otel.fanout);
    # each sends from its own thread, so the one that hangs only loses its own batches.
    env = {
        "SENTRY_DSN": sentry.dsn,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
        "TRACEGATE_SENTRY_TRACES": "otlp",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "300",  # ms
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "5",
    }
    if hung == "sentry":
        env["SENTRY_DSN"] = silent_server.replace("http://", "http://public@") + "/42"
    else:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = silent_server
    healthy = otlp_receiver if hung == "sentry" else sentry.otlp
    with gateways(env) as make:
        gateway = make()
        for number in range(40):
            assert gateway.client.get(f"/example?n={number}").status_code == 200
        gateway.telemetry.flush(1.0)
        spans = healthy.wait_for_spans(lambda s: s.name == "GET /example", 40, timeout=15)
        assert len({s.span_id_hex for s in spans}) == 40
        counters = gateway.telemetry.counters
        lost = "sentry_otlp" if hung == "sentry" else "otlp"
        kept = "otlp" if hung == "sentry" else "sentry_otlp"
        deadline = time.monotonic() + 10
        while counters.get("spans_dropped", exporter=lost, reason="export_failed") == 0:
            assert time.monotonic() < deadline, "the hung destination's losses were not counted"
            time.sleep(0.05)
        for reason in ("export_failed", "queue_full"):
            assert counters.get("spans_dropped", exporter=kept, reason=reason) == 0


def test_each_batch_is_encoded_once_unless_the_collector_needs_opentelemetrys_exporter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from otel.config import TelemetryConfig
    from otel.counters import Counters
    from otel.fanout import FanoutExporter
    from otel.provider import build_fanout

    config = TelemetryConfig.from_env(
        {
            "SENTRY_DSN": "http://public@127.0.0.1:9/42",
            "TRACEGATE_SENTRY_TRACES": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
        }
    )
    fanout = build_fanout(config, Counters())
    assert isinstance(fanout, FanoutExporter)
    assert [p.url for p in fanout.posters] == [
        "http://127.0.0.1:9/v1/traces",
        "http://127.0.0.1:9/api/42/integration/otlp/v1/traces/",
    ]
    # A client certificate is applied by OpenTelemetry's exporter only: it keeps the
    # collector, and each destination its own batch processor.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/etc/collector/client.pem")
    assert build_fanout(config, Counters()) is None
    grpc = TelemetryConfig.from_env(
        {
            "SENTRY_DSN": "http://public@127.0.0.1:9/42",
            "TRACEGATE_SENTRY_TRACES": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        }
    )
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")
    assert build_fanout(grpc, Counters()) is None


def test_the_otlp_target_is_the_one_sentry_sdk_derives() -> None:
    from sentry_sdk.utils import Dsn

    for dsn in (
        "https://abc@o1.ingest.sentry.io/123",
        "http://public@127.0.0.1:9000/42",
        "https://key:secret@sentry.example.com:8443/sub/path/7",
    ):
        auth = Dsn(dsn).to_auth("tracegate/1")
        url = f"{auth.scheme}://{auth.host}{auth.path}api/{auth.project_id}/"
        url += "integration/otlp/v1/traces/"
        assert sentry_otlp_target(dsn, "tracegate/1") == (url, auth.to_header())
