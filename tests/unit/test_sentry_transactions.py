"""The bridge's own transaction envelopes: what sentry-sdk's `capture_event` would send,
built without its serialiser; the span JSON; the compact gzip; segment bookkeeping; the
`otlp` mode's settings and target. No sockets: a capturing sentry-sdk transport."""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode
from sentry_sdk.envelope import Envelope
from sentry_sdk.integrations.rq import RqIntegration
from sentry_sdk.transport import HttpTransport, Transport

from otel.config import ConfigError, TelemetryConfig
from otel.counters import Counters
from otel.propagation import DscDefaults, TracegatePropagator
from otel.provider import SentryOTLPExporter, build_sentry_exporter
from otel.sentry import CompactHttpTransport, SentryBridge, TracegateIntegration

DSN = "http://public@127.0.0.1:9/42"


class Capture(Transport):
    """Keeps every envelope; sends nothing."""

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def items(self, item_type: str) -> list[dict[str, Any]]:
        return [
            json.loads(item.get_bytes())
            for envelope in self.envelopes
            for item in envelope.items
            if item.type == item_type
        ]


def _bridge(**overrides: Any) -> SentryBridge:
    config = TelemetryConfig(service_name="unit", sentry_dsn=DSN, **overrides)
    propagator = TracegatePropagator(
        DscDefaults(public_key="public", environment="development", release="", sample_rate=1.0),
        Counters(),
    )
    return SentryBridge(config, propagator)


@pytest.fixture
def capture() -> Iterator[Capture]:
    transport = Capture({"dsn": DSN})
    yield transport
    sentry_sdk.get_client().close(timeout=0)


def _start(bridge: SentryBridge, transport: Capture) -> TracerProvider:
    sentry_sdk.init(
        dsn=DSN,
        transport=transport,
        traces_sample_rate=None,
        max_request_body_size="never",
        integrations=[TracegateIntegration(bridge)],
        disabled_integrations=[RqIntegration()],
        release="r1",
        server_name="unit-host",
    )
    provider = TracerProvider(resource=Resource.create({"service.name": "unit"}))
    provider.add_span_processor(bridge)
    return provider


def _tree(provider: TracerProvider, children: int = 3) -> None:
    tracer = provider.get_tracer("unit")
    attributes = {"http.request.method": "GET", "http.route": "/orders/<id>"}
    with tracer.start_as_current_span("GET /orders/<id>", kind=SpanKind.SERVER) as root:
        root.set_attributes(attributes)
        for index in range(children):
            with tracer.start_as_current_span(f"child {index} é", attributes={"app.item": index}):
                pass
        query = {"db.system.name": "sqlite", "db.statement": "SELECT 1"}
        with tracer.start_as_current_span("query", kind=SpanKind.CLIENT, attributes=query):
            pass
        with tracer.start_as_current_span("odd values") as odd:
            odd.set_attribute("ratio", math.nan)
            odd.set_attribute("password", "hunter2")  # sentry-sdk's scrubber filters this
            odd.set_attribute("tags", ("a", "b"))
            odd.set_status(Status(StatusCode.ERROR))
        root.set_attribute("http.response.status_code", 200)


_VARYING = {"event_id", "timestamp", "start_timestamp", "span_id", "parent_span_id", "trace_id"}


def _stable(value: Any) -> Any:
    """The parts of a transaction that two runs of the same spans share."""
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in _VARYING}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def test_the_bridges_envelope_is_what_sentry_sdks_capture_event_sends(
    capture: Capture,
) -> None:
    bridge = _bridge()
    provider = _start(bridge, capture)
    # Breadcrumbs left by earlier tests: sentry-sdk drops them from transactions but
    # notes their size in `_meta`, which says nothing about the two paths.
    with sentry_sdk.isolation_scope() as isolation, sentry_sdk.new_scope() as scope:
        isolation.clear_breadcrumbs()
        scope.set_tag("tenant", "acme")
        _tree(provider)
        fast = capture.items("transaction")
        # A `before_send_transaction` hook is only sentry-sdk's to apply: the bridge
        # hands the same event to `capture_event`, whose serialiser is the reference.
        sentry_sdk.get_client().options["before_send_transaction"] = lambda event, hint: event
        _tree(provider)
    slow = capture.items("transaction")[1:]
    assert len(fast) == len(slow) == 1
    assert _stable(fast[0]) == _stable(slow[0])
    spans = {span["description"]: span for span in fast[0]["spans"]}
    assert spans["odd values"]["data"] == {
        "ratio": "nan",
        "password": "[Filtered]",
        "tags": ["a", "b"],
    }
    assert spans["odd values"]["status"] == "internal_error"
    assert spans["SELECT 1"]["op"] == "db"
    assert spans["child 2 é"]["op"] == "function" and spans["child 2 é"]["data"] == {"app.item": 2}
    assert fast[0]["tags"]["tenant"] == "acme"
    assert fast[0]["release"] == "r1" and fast[0]["server_name"] == "unit-host"
    assert fast[0]["sdk"]["name"].startswith("sentry.python")
    headers = [e.headers for e in capture.envelopes if e.items[0].type == "transaction"]
    assert headers[0]["trace"]["trace_id"] == fast[0]["contexts"]["trace"]["trace_id"]
    assert headers[0]["trace"]["sampled"] == "true"
    assert headers[0]["event_id"] == fast[0]["event_id"]


def test_child_spans_keep_their_ids_parents_and_times(capture: Capture) -> None:
    provider = _start(_bridge(), capture)
    tracer = provider.get_tracer("unit")
    with (
        tracer.start_as_current_span("root", kind=SpanKind.CONSUMER) as root,
        tracer.start_as_current_span("middle") as middle,
        tracer.start_as_current_span("leaf") as leaf,
    ):
        pass
    (transaction,) = capture.items("transaction")
    spans = {span["description"]: span for span in transaction["spans"]}
    root_id = f"{root.get_span_context().span_id:016x}"
    assert transaction["contexts"]["trace"]["span_id"] == root_id
    assert spans["middle"]["parent_span_id"] == root_id
    assert spans["leaf"]["parent_span_id"] == f"{middle.get_span_context().span_id:016x}"
    assert spans["leaf"]["span_id"] == f"{leaf.get_span_context().span_id:016x}"
    assert spans["leaf"]["start_timestamp"] == pytest.approx(leaf.start_time / 1e9)
    assert spans["leaf"]["timestamp"] == pytest.approx(leaf.end_time / 1e9)
    assert {span["trace_id"] for span in spans.values()} == {
        transaction["contexts"]["trace"]["trace_id"]
    }
    assert transaction["contexts"]["trace"]["op"] == "queue.process"


def test_segments_are_bounded(capture: Capture) -> None:
    bridge = _bridge(max_open_segments=2, max_spans_per_segment=2)
    provider = _start(bridge, capture)
    tracer = provider.get_tracer("unit")
    open_roots = [tracer.start_span(f"open {i}") for i in range(3)]  # the first is evicted
    with tracer.start_as_current_span("full"):
        for index in range(4):
            with tracer.start_as_current_span(f"child {index}"):
                pass
    for span in open_roots:
        span.end()
    transactions = {t["transaction"]: t for t in capture.items("transaction")}
    assert "open 0" not in transactions and {"open 2", "full"} <= set(transactions)
    assert len(transactions["full"]["spans"]) == 2
    assert transactions["full"]["tags"]["tracegate.dropped_spans"] == "2"
    assert bridge.dropped_spans >= 3


def test_a_child_that_outlives_its_root_is_not_kept(capture: Capture) -> None:
    bridge = _bridge()
    provider = _start(bridge, capture)
    tracer = provider.get_tracer("unit")
    with tracer.start_as_current_span("root"):
        late = tracer.start_span("late")
    late.end()
    (transaction,) = capture.items("transaction")
    assert transaction["spans"] == []
    assert bridge._segment_of == {}


def test_otlp_mode_collects_no_segments_but_still_reports_span_errors(capture: Capture) -> None:
    bridge = _bridge(sentry_traces="otlp")
    provider = _start(bridge, capture)
    tracer = provider.get_tracer("unit")
    with tracer.start_as_current_span("job") as span:
        with tracer.start_as_current_span("step"):
            pass
        span.record_exception(RuntimeError("lost otherwise"))
        span.set_status(Status(StatusCode.ERROR))
    assert capture.items("transaction") == []
    assert bridge._segments == {} and bridge._segment_of == {}
    (error,) = capture.items("event")
    assert error["exception"]["values"][0]["type"] == "RuntimeError"
    assert error["contexts"]["trace"]["span_id"] == f"{span.get_span_context().span_id:016x}"


def test_compact_gzip_is_gzip_and_used_by_sentry_sdk() -> None:
    # The override takes effect only while sentry-sdk serialises envelopes there.
    assert hasattr(HttpTransport, "_serialize_envelope")
    transport = CompactHttpTransport({**_default_options(), "dsn": DSN})
    envelope = Envelope(headers={"event_id": "0" * 32})
    envelope.add_transaction({"type": "transaction", "spans": [{"op": "x" * 40}] * 200})
    encoding, body = transport._serialize_envelope(envelope)
    assert encoding == "gzip"
    assert gzip.decompress(body.getvalue()) == envelope.serialize()
    level_set = CompactHttpTransport(
        {
            **_default_options(),
            "dsn": DSN,
            "_experiments": {"transport_compression_level": 0},
        }
    )
    assert level_set._serialize_envelope(envelope)[0] is None  # the user's choice stands
    transport.kill()
    level_set.kill()


def _default_options() -> dict[str, Any]:
    from sentry_sdk.client import get_options

    options: dict[str, Any] = get_options()
    return options


def test_sentry_traces_setting() -> None:
    assert TelemetryConfig.from_env({}).sentry_traces == "envelope"
    otlp = TelemetryConfig.from_env({"TRACEGATE_SENTRY_TRACES": "OTLP", "SENTRY_DSN": DSN})
    assert otlp.sentry_traces == "otlp" and otlp.sentry_otlp_enabled
    assert not TelemetryConfig(sentry_traces="otlp").sentry_otlp_enabled  # no DSN
    with pytest.raises(ConfigError) as raised:
        TelemetryConfig.from_env(
            {"TRACEGATE_SENTRY_TRACES": "carrier-pigeon", "OTEL_TRACES_SAMPLER": "sometimes"}
        )
    assert len(raised.value.problems) == 2
    assert "TRACEGATE_SENTRY_TRACES: 'carrier-pigeon' is not one of envelope, otlp" in str(
        raised.value
    )
    with pytest.raises(ConfigError, match="TRACEGATE_SENTRY_TRACES"):
        TelemetryConfig().with_overrides(sentry_traces="both")


def test_the_sentry_exporter_takes_nothing_from_the_collectors_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer collector-secret")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "x-collector=1")
    config = TelemetryConfig(sentry_dsn=DSN, sentry_traces="otlp", otlp_timeout_s=3.0)
    exporter = build_sentry_exporter(config)
    assert isinstance(exporter, SentryOTLPExporter)
    assert exporter.url == "http://127.0.0.1:9/api/42/integration/otlp/v1/traces/"
    headers = {k.lower(): v for k, v in exporter._session.headers.items()}
    assert "authorization" not in headers and "x-collector" not in headers
    assert headers["x-sentry-auth"].startswith("Sentry sentry_key=public, sentry_version=7, ")
    assert headers["content-type"] == "application/x-protobuf"
    exporter.shutdown()
    assert build_sentry_exporter(TelemetryConfig(sentry_dsn=DSN)) is None  # envelope mode


def test_transactions_are_built_only_for_someone_to_receive_them() -> None:
    propagator = TracegatePropagator(DscDefaults(), Counters())

    def builds(**config: str) -> bool:
        return SentryBridge(TelemetryConfig(**config), propagator).transactions

    assert builds(sentry_dsn=DSN)
    assert builds(sentry_spotlight="http://127.0.0.1:8969/stream", sentry_traces="otlp")
    assert not builds(sentry_dsn=DSN, sentry_traces="otlp")  # Sentry's OTLP endpoint
    assert not builds()  # the local store's sink takes error and message events only


def test_a_forked_child_gets_its_own_connections_to_sentry() -> None:
    exporter = build_sentry_exporter(TelemetryConfig(sentry_dsn=DSN, sentry_traces="otlp"))
    assert exporter is not None
    parent_session = id(exporter._session)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child answers through the pipe and leaves at once
        renewed = id(exporter._session) != parent_session and exporter._session.headers.get(
            "X-Sentry-Auth", ""
        ).startswith("Sentry sentry_key=public")
        os.write(write, b"1" if renewed else b"0")
        os._exit(0)
    os.close(write)
    answer = os.read(read, 1)
    os.close(read)
    os.waitpid(pid, 0)
    assert answer == b"1"
    assert id(exporter._session) == parent_session
    exporter.shutdown()


def test_in_otlp_mode_the_unit_keeps_the_segments_pin(capture: Capture) -> None:
    from otel.sentry import current_pin, open_unit, unpin

    provider = _start(_bridge(sentry_traces="otlp"), capture)
    tracer = provider.get_tracer("unit")
    token = open_unit()
    try:
        with (
            tracer.start_as_current_span("request") as root,
            tracer.start_as_current_span("child"),
        ):
            pass
        pinned = current_pin()  # the request's span has ended: the pin answers
        assert pinned is not None
        assert pinned.span_id == root.get_span_context().span_id
    finally:
        unpin(token)
