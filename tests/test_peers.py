"""Self-tests of the test peers: each one receives what a REAL client sends.

sentry-sdk's real HttpTransport and SpotlightClient, the real OTLP/HTTP span exporter
and redis-py talk to the peers from ``tests/peers``; nothing is mocked. No test leaves
a global sentry client or tracer provider behind.
"""

from __future__ import annotations

import gzip
import json
import logging
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
import sentry_sdk
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from tests.peers import EnvelopeReceiver, OTLPReceiver, SpotlightSidecar, parse_envelope
from tests.peers.oteltap import OtelTap
from tests.peers.spans import SpanInbox


def _marker() -> str:
    return f"peer-self-test-{uuid.uuid4().hex}"


@contextmanager
def _sentry(**options: Any) -> Iterator[sentry_sdk.Client]:
    """A real sentry-sdk client bound to a fresh scope only; flushed and closed after.

    Also undoes the stderr handler that sentry-sdk adds to the global "spotlight"
    logger each time a client is created with the ``spotlight`` option.
    """
    global_client = _active_client()
    spotlight_logger = logging.getLogger("spotlight")
    handlers, level = list(spotlight_logger.handlers), spotlight_logger.level
    try:
        with _client(**options) as client:
            yield client
    finally:
        spotlight_logger.handlers[:] = handlers
        spotlight_logger.setLevel(level)
    assert _active_client() is global_client, "the test client leaked into global state"


def _active_client() -> sentry_sdk.client.BaseClient | None:
    client = sentry_sdk.get_client()
    return client if client.is_active() else None


@contextmanager
def _client(**options: Any) -> Iterator[sentry_sdk.Client]:
    client = sentry_sdk.Client(
        default_integrations=False, auto_enabling_integrations=False, **options
    )
    try:
        with sentry_sdk.new_scope() as scope:
            scope.set_client(client)
            yield client
    finally:
        client.close(timeout=5)  # flushes the transport first


# --- Sentry envelopes -------------------------------------------------------------------


def test_parse_envelope_with_length_newline_and_raw_items() -> None:
    raw = (
        b'{"event_id":"abc","dsn":"http://k@h/1"}\n'
        b'{"type":"event","length":25}\n{"message":"two\\nlines"}\n'
        b'{"type":"transaction"}\n{"transaction":"GET /"}\n'
        b'{"type":"attachment","length":3,"filename":"a.bin"}\n\x00\n\x01\n'
    )
    envelope = parse_envelope(raw)
    assert envelope.headers["event_id"] == "abc"
    assert [item.type for item in envelope.items] == ["event", "transaction", "attachment"]
    assert envelope.items[0].payload == {"message": "two\nlines"}
    assert envelope.items[1].payload == {"transaction": "GET /"}
    assert envelope.items[2].payload == b"\x00\n\x01"


@pytest.mark.parametrize(
    "experiments",
    [{}, {"transport_compression_level": 0}],
    ids=["default-compression", "uncompressed"],
)
def test_sentry_message_reaches_envelope_receiver(
    envelope_receiver: EnvelopeReceiver, experiments: dict[str, Any]
) -> None:
    marker = _marker()
    with _sentry(dsn=envelope_receiver.dsn, _experiments=experiments):
        event_id = sentry_sdk.capture_message(marker)

    event = envelope_receiver.wait_for(lambda e: e["message"] == marker, item_type="event")
    assert event["event_id"] == event_id
    assert envelope_receiver.events() == [event]
    assert envelope_receiver.envelopes[0].project_id == str(envelope_receiver.project_id)


def test_sentry_transaction_reaches_envelope_receiver(envelope_receiver: EnvelopeReceiver) -> None:
    marker = _marker()
    with (
        _sentry(dsn=envelope_receiver.dsn, traces_sample_rate=1.0),
        sentry_sdk.start_transaction(name=marker, op="test"),
        sentry_sdk.start_span(op="child", name="inner"),
    ):
        pass

    transaction = envelope_receiver.wait_for(lambda t: t["transaction"] == marker)
    assert transaction in envelope_receiver.transactions()
    assert [span["description"] for span in transaction["spans"]] == ["inner"]


def test_envelope_receiver_wait_for_reports_what_arrived(
    envelope_receiver: EnvelopeReceiver,
) -> None:
    with _sentry(dsn=envelope_receiver.dsn):
        sentry_sdk.capture_message("something else")
    envelope_receiver.wait_for(lambda e: e["message"] == "something else")

    with pytest.raises(AssertionError, match="event 'something else'"):
        envelope_receiver.wait_for(lambda e: e["message"] == "never sent", timeout=0.2)


def test_envelope_receiver_store_endpoint_and_bad_bodies(
    envelope_receiver: EnvelopeReceiver,
) -> None:
    base = f"http://127.0.0.1:{envelope_receiver.port}/api/42"
    body = gzip.compress(json.dumps({"event_id": "e1", "message": "legacy"}).encode())
    request = urllib.request.Request(
        f"{base}/store/", data=body, headers={"Content-Encoding": "gzip"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert json.load(response) == {"id": "e1"}
    assert envelope_receiver.events() == [{"event_id": "e1", "message": "legacy"}]

    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(
            urllib.request.Request(f"{base}/envelope/", data=b"not json\n", method="POST"),
            timeout=5,
        )
    assert bad.value.code == 400


# --- OTLP -------------------------------------------------------------------------------


def _export_spans(traces_endpoint: str, marker: str, compression: Compression) -> tuple[str, str]:
    """Export a parent and a linked child through the real OTLP/HTTP exporter.

    Uses a private TracerProvider (never the global one); returns (trace id, parent id).
    """
    provider = TracerProvider(resource=Resource.create({"service.name": "peers-self-test"}))
    exporter = OTLPSpanExporter(endpoint=traces_endpoint, compression=compression, timeout=5)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests.peers")
    try:
        with tracer.start_as_current_span(
            marker, kind=SpanKind.SERVER, attributes={"http.route": "/x", "retries": 2}
        ) as parent:
            parent.add_event("checkpoint", {"ok": True, "tags": ["a", "b"]})
            context = parent.get_span_context()
            with tracer.start_as_current_span(
                f"{marker}-child", links=[Link(context, {"why": "self"})]
            ) as child:
                child.set_status(Status(StatusCode.ERROR, "boom"))
    finally:
        provider.shutdown()
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def _assert_exported(inbox: SpanInbox, marker: str, trace_id: str, parent_id: str) -> None:
    parent = inbox.wait_for_span(lambda s: s.name == marker)
    child = inbox.wait_for_span(lambda s: s.name == f"{marker}-child")
    assert parent.trace_id_hex == child.trace_id_hex == trace_id
    assert parent.span_id_hex == parent_id
    assert parent.is_root and child.parent_span_id_hex == parent_id
    assert parent.kind_name == SpanKind.SERVER.name
    assert parent.attributes == {"http.route": "/x", "retries": 2}
    assert parent.events == [("checkpoint", {"ok": True, "tags": ["a", "b"]})]
    assert child.status_name == "ERROR" and child.status_message == "boom"
    assert child.links == [(trace_id, parent_id, {"why": "self"})]
    assert parent.end_time_ns >= parent.start_time_ns > 0
    assert len(inbox.wait_for_spans(lambda s: s.trace_id_hex == trace_id, count=2)) == 2


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_otlp_exporter_spans_reach_otlp_receiver(
    otlp_receiver: OTLPReceiver, compression: Compression
) -> None:
    marker = _marker()
    trace_id, parent_id = _export_spans(otlp_receiver.traces_endpoint, marker, compression)

    _assert_exported(otlp_receiver, marker, trace_id, parent_id)
    parent = otlp_receiver.wait_for_span(lambda s: s.name == marker)
    assert parent.resource["service.name"] == "peers-self-test"
    assert parent.scope_name == "tests.peers"


@pytest.mark.interop
def test_otlp_exporter_spans_reach_oteltap(oteltap: OtelTap) -> None:
    marker = _marker()
    trace_id, parent_id = _export_spans(oteltap.traces_endpoint, marker, Compression.NoCompression)

    _assert_exported(oteltap, marker, trace_id, parent_id)


# --- redis ------------------------------------------------------------------------------


def test_redis_server_answers_redis_py(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.ping() is True
        assert client.dbsize() == 0
        client.set("peer:key", "value")
        assert client.get("peer:key") == b"value"
        assert client.connection_pool.connection_kwargs["host"] == "127.0.0.1"


# --- Spotlight --------------------------------------------------------------------------


@pytest.mark.interop
def test_sentry_message_reaches_spotlight_sidecar(spotlight: SpotlightSidecar) -> None:
    marker = _marker()
    with _sentry(spotlight=spotlight.url):
        event_id = sentry_sdk.capture_message(marker)

    event = spotlight.wait_for(lambda e: e["message"] == marker, item_type="event")
    assert event["event_id"] == event_id
    assert spotlight.events() == [event]
