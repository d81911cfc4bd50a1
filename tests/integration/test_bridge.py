"""One trace id from the inbound header to every Sentry event, the Sentry transaction and
the exported OTLP span — asserted on what the real peers received."""

from __future__ import annotations

import logging
import time
from typing import Any

import flask
import sentry_sdk
from opentelemetry import trace

from tests.harness import GatewayFactory
from tests.peers.envelope import EnvelopeReceiver
from tests.peers.otlp import OTLPReceiver

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACE_UUID = "4bf92f35-77b3-4da6-a3ce-929d0e0e4736"
PARENT = "00f067aa0ba902b7"


def _trace_of(event: dict[str, Any]) -> dict[str, Any]:
    trace_context: dict[str, Any] = event["contexts"]["trace"]
    return trace_context


def _is_message(text: str) -> Any:
    return lambda e: (e.get("logentry") or {}).get("message") == text or e.get("message") == text


def test_traceparent_reaches_message_error_transaction_and_otlp(
    make_gateway: GatewayFactory, envelope_receiver: EnvelopeReceiver, otlp_receiver: OTLPReceiver
) -> None:
    gateway = make_gateway()
    headers = {"traceparent": f"00-{TRACE}-{PARENT}-01", "baggage": "tenant=acme"}

    ok = gateway.client.get("/example", headers=headers)
    failed = gateway.client.get("/example/error", headers=headers)
    gateway.flush()

    assert ok.status_code == 200 and ok.json is not None
    assert ok.json["trace_id"] == TRACE and ok.headers["X-Trace-ID"] == TRACE_UUID
    assert ok.headers["traceresponse"].startswith(f"00-{TRACE}-")
    assert failed.status_code == 500 and failed.json is not None
    assert failed.json["error"]["trace_id"] == TRACE

    message = envelope_receiver.wait_for(_is_message("Example route accessed"), item_type="event")
    assert _trace_of(message)["trace_id"] == TRACE
    assert _trace_of(message)["parent_span_id"] == PARENT
    assert message["tags"]["trace_id"] == TRACE_UUID
    assert message["event_id"] == ok.json["sentry_event_id"]

    error = envelope_receiver.wait_for(lambda e: "exception" in e, item_type="event")
    assert error["exception"]["values"][-1]["type"] == "ExampleError"
    assert _trace_of(error)["trace_id"] == TRACE
    assert len(envelope_receiver.events()) == 2  # the message and the error, each once

    # The envelope's `trace` header carries the dynamic sampling context of the same trace.
    headers_of = [
        env.headers
        for env in envelope_receiver.envelopes
        if env.headers.get("event_id") == message["event_id"]
    ]
    assert headers_of and headers_of[0]["trace"]["trace_id"] == TRACE
    assert headers_of[0]["trace"]["sampled"] == "true"

    transaction = envelope_receiver.wait_for(
        lambda t: t["transaction"] == "GET /example", item_type="transaction"
    )
    assert _trace_of(transaction)["trace_id"] == TRACE
    assert _trace_of(transaction)["parent_span_id"] == PARENT
    assert _trace_of(transaction)["op"] == "http.server"
    assert _trace_of(transaction)["status"] == "ok"
    failed_transaction = envelope_receiver.wait_for(
        lambda t: t["transaction"] == "GET /example/error", item_type="transaction"
    )
    assert _trace_of(failed_transaction)["status"] == "internal_error"
    # sentry-sdk's own Flask integration started no second, competing transaction.
    assert len(envelope_receiver.transactions()) == 2

    server = otlp_receiver.wait_for_span(lambda s: s.name == "GET /example")
    assert server.trace_id_hex == TRACE and server.parent_span_id_hex == PARENT
    assert server.kind_name == "SERVER"
    assert server.span_id_hex == _trace_of(transaction)["span_id"] == _trace_of(message)["span_id"]
    # Each side links to the other: the Sentry event id is on the span.
    assert server.attributes["sentry.event_id"] == message["event_id"]
    assert server.resource["service.name"] == "tracegate-test"
    failed_span = otlp_receiver.wait_for_span(lambda s: s.name == "GET /example/error")
    assert failed_span.status_name == "ERROR"
    assert any(name == "exception" for name, _ in failed_span.events)


def test_sentry_trace_only_is_continued(
    make_gateway: GatewayFactory, envelope_receiver: EnvelopeReceiver, otlp_receiver: OTLPReceiver
) -> None:
    gateway = make_gateway()
    response = gateway.client.get("/example", headers={"sentry-trace": f"{TRACE}-{PARENT}-1"})
    gateway.flush()
    assert response.status_code == 200 and response.json is not None
    assert response.json["trace_id"] == TRACE
    message = envelope_receiver.wait_for(_is_message("Example route accessed"), item_type="event")
    assert _trace_of(message)["trace_id"] == TRACE
    assert _trace_of(message)["parent_span_id"] == PARENT
    server = otlp_receiver.wait_for_span(lambda s: s.name == "GET /example")
    assert (server.trace_id_hex, server.parent_span_id_hex) == (TRACE, PARENT)


def test_x_trace_id_uuid_is_adopted(
    make_gateway: GatewayFactory, envelope_receiver: EnvelopeReceiver, otlp_receiver: OTLPReceiver
) -> None:
    gateway = make_gateway()
    response = gateway.client.get("/example", headers={"X-Trace-ID": TRACE_UUID.upper()})
    gateway.flush()
    assert response.json is not None and response.json["trace_id"] == TRACE
    assert response.headers["X-Trace-ID"] == TRACE_UUID
    # Sampled, but not flagged random (W3C Level 2): the caller chose the id.
    assert response.headers["traceresponse"].endswith("-01")
    message = envelope_receiver.wait_for(_is_message("Example route accessed"), item_type="event")
    assert _trace_of(message)["trace_id"] == TRACE
    assert "parent_span_id" not in _trace_of(message)
    fresh = gateway.client.get("/example")  # no trace headers: a random id of our own
    assert fresh.headers["traceresponse"].endswith("-03")
    server = otlp_receiver.wait_for_span(lambda s: s.name == "GET /example")
    assert server.trace_id_hex == TRACE and server.parent_span_id_hex == ""


def test_malformed_headers_start_a_new_trace_and_answer_normally(
    make_gateway: GatewayFactory, envelope_receiver: EnvelopeReceiver, otlp_receiver: OTLPReceiver
) -> None:
    gateway = make_gateway()
    hostile = "<script>alert(1)</script>"
    response = gateway.client.get(
        "/example",
        headers={
            "traceparent": f"00-{TRACE.upper()}-{PARENT}-01",
            "tracestate": hostile,
            "sentry-trace": hostile,
            "X-Trace-ID": "00000000-0000-0000-0000-000000000000",
            "baggage": "%%%;;==,,",
        },
    )
    gateway.flush()
    assert response.status_code == 200 and response.json is not None
    new_trace = response.json["trace_id"]
    assert new_trace not in (TRACE, None) and len(new_trace) == 32
    assert hostile not in response.get_data(as_text=True)
    assert all(hostile not in value for value in response.headers.values())
    message = envelope_receiver.wait_for(_is_message("Example route accessed"), item_type="event")
    assert _trace_of(message)["trace_id"] == new_trace
    server = otlp_receiver.wait_for_span(lambda s: s.name == "GET /example")
    assert server.trace_id_hex == new_trace and server.parent_span_id_hex == ""


def test_unsampled_inbound_links_errors_but_sends_no_transaction_or_span(
    make_gateway: GatewayFactory, envelope_receiver: EnvelopeReceiver, otlp_receiver: OTLPReceiver
) -> None:
    gateway = make_gateway()
    headers = {"traceparent": f"00-{TRACE}-{PARENT}-00"}
    assert gateway.client.get("/example/error", headers=headers).status_code == 500
    assert gateway.client.get("/example", headers=headers).status_code == 200
    gateway.flush()
    error = envelope_receiver.wait_for(lambda e: "exception" in e, item_type="event")
    assert _trace_of(error)["trace_id"] == TRACE
    assert _trace_of(error)["parent_span_id"] == PARENT
    message = envelope_receiver.wait_for(_is_message("Example route accessed"), item_type="event")
    assert _trace_of(message)["trace_id"] == TRACE
    assert len(envelope_receiver.events()) == 2  # one error, one message: nothing twice
    sampled = [
        env.headers["trace"]["sampled"]
        for env in envelope_receiver.envelopes
        if any(item.type == "event" for item in env.items)
    ]
    assert sampled and set(sampled) == {"false"}
    # A marker request proves the pipelines were flowing while the unsampled ones were not sent.
    gateway.client.get("/example", headers={"traceparent": f"00-{'1' * 32}-{PARENT}-01"})
    gateway.flush()
    otlp_receiver.wait_for_span(lambda s: s.trace_id_hex == "1" * 32)
    envelope_receiver.wait_for(
        lambda t: _trace_of(t)["trace_id"] == "1" * 32, item_type="transaction"
    )
    assert not [t for t in envelope_receiver.transactions() if _trace_of(t)["trace_id"] == TRACE]
    assert not [s for s in otlp_receiver.spans if s.trace_id_hex == TRACE]


def test_error_captured_in_app_teardown_still_links(
    make_gateway: GatewayFactory, envelope_receiver: EnvelopeReceiver
) -> None:
    gateway = make_gateway()
    inside: list[bool] = []

    @gateway.app.teardown_appcontext
    def report_late(_: BaseException | None) -> None:
        # Flask's last hook still runs inside the server span, which ends when the
        # WSGI app returns.
        inside.append(trace.get_current_span().is_recording())
        sentry_sdk.capture_message("late teardown report")

    gateway.client.get("/example", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    gateway.flush()
    assert inside == [True]
    late = envelope_receiver.wait_for(_is_message("late teardown report"), item_type="event")
    assert _trace_of(late)["trace_id"] == TRACE
    assert _trace_of(late)["parent_span_id"] == PARENT


def test_transaction_carries_child_spans_with_their_parents(
    make_gateway: GatewayFactory, envelope_receiver: EnvelopeReceiver
) -> None:
    gateway = make_gateway()

    @gateway.app.get("/work")
    def work() -> flask.Response:
        tracer = gateway.telemetry.tracer("test")
        with (
            tracer.start_as_current_span("load", attributes={"db.system": "redis"}),
            tracer.start_as_current_span("parse"),
        ):
            pass
        return flask.jsonify({})

    gateway.client.get("/work", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    gateway.flush()
    transaction = envelope_receiver.wait_for(
        lambda t: t["transaction"] == "GET /work", item_type="transaction"
    )
    spans = {s["description"]: s for s in transaction["spans"]}
    root_id = _trace_of(transaction)["span_id"]
    assert spans["load"]["parent_span_id"] == root_id and spans["load"]["op"] == "db"
    assert spans["parse"]["parent_span_id"] == spans["load"]["span_id"]
    assert {s["trace_id"] for s in spans.values()} == {TRACE}


def test_span_exception_sentry_never_saw_becomes_a_sentry_error(
    make_gateway: GatewayFactory, envelope_receiver: EnvelopeReceiver
) -> None:
    gateway = make_gateway()
    tracer = gateway.telemetry.tracer("test")
    try:
        with tracer.start_as_current_span("background"):
            raise LookupError("only recorded on the span")
    except LookupError:
        pass
    gateway.flush()
    error = envelope_receiver.wait_for(lambda e: "exception" in e, item_type="event")
    assert error["exception"]["values"][0]["type"] == "LookupError"
    assert error["exception"]["values"][0]["value"] == "only recorded on the span"
    assert error["tags"]["otel.span"] == "background"


def test_cors_preflight_allows_and_exposes_trace_headers(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway(TRACEGATE_CORS_ORIGINS="https://app.example.com")
    response = gateway.client.options(
        "/example",
        headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"},
    )
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    allowed = response.headers["Access-Control-Allow-Headers"].lower()
    for header in ("traceparent", "tracestate", "baggage", "sentry-trace", "x-trace-id"):
        assert header in allowed
    jobs = gateway.client.options(
        "/v1/jobs",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization,traceparent",
        },
    )
    assert {"content-type", "authorization", "traceparent"} <= {
        h.strip().lower() for h in jobs.headers["Access-Control-Allow-Headers"].split(",")
    }
    assert "POST" in jobs.headers["Access-Control-Allow-Methods"]
    exposed = gateway.client.get("/example").headers["Access-Control-Expose-Headers"]
    assert "traceresponse" in exposed and "X-Trace-ID" in exposed
    other = gateway.client.get("/example", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_error_envelope_for_unknown_routes_and_methods(make_gateway: GatewayFactory) -> None:
    gateway = make_gateway()
    missing = gateway.client.get("/nope", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    assert missing.status_code == 404 and missing.json is not None
    assert missing.json["error"]["code"] == "not_found"
    assert missing.json["error"]["trace_id"] == TRACE
    assert missing.headers["X-Trace-ID"] == TRACE_UUID
    wrong = gateway.client.post("/example", data=b"x" * 100)
    assert wrong.status_code == 405 and wrong.json is not None
    assert wrong.json["error"]["code"] == "method_not_allowed"
    assert "GET" in wrong.headers["Allow"]
    assert set(wrong.json["error"]) == {"code", "message", "trace_id"}


def test_a_users_logger_leaves_breadcrumbs_and_error_events_with_the_trace_ids(
    make_gateway: GatewayFactory, envelope_receiver: EnvelopeReceiver
) -> None:
    # sentry-sdk's logging integration is set up by tracegate (without Sentry Logs):
    # its breadcrumbs and its error events stay.
    gateway = make_gateway()
    audit = logging.getLogger("shop.audit")

    @gateway.app.get("/checkout")
    def checkout() -> flask.Response:
        audit.warning("card declined")
        audit.error("gateway timeout for order %s", 7)
        sentry_sdk.capture_message("checkout failed")
        return flask.jsonify({})

    gateway.client.get("/checkout", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
    gateway.flush()
    event = envelope_receiver.wait_for(_is_message("checkout failed"), item_type="event")
    (crumb,) = [c for c in event["breadcrumbs"]["values"] if c.get("message") == "card declined"]
    assert crumb["data"]["otel_trace_id"] == TRACE
    assert crumb["data"]["otel_trace_id_uuid"] == TRACE_UUID
    assert crumb["data"]["otel_span_id"] == event["contexts"]["trace"]["span_id"]
    logged = envelope_receiver.wait_for(
        lambda e: (e.get("logentry") or {}).get("message") == "gateway timeout for order %s",
        item_type="event",
    )
    assert logged["logger"] == "shop.audit" and logged["level"] == "error"
    assert logged["contexts"]["trace"]["trace_id"] == TRACE


def test_sdk_disabled_still_reports_errors(
    make_gateway: GatewayFactory, envelope_receiver: EnvelopeReceiver
) -> None:
    gateway = make_gateway(OTEL_SDK_DISABLED="true")
    assert gateway.telemetry.provider is None
    response = gateway.client.get(
        "/example/error", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"}
    )
    gateway.flush()
    assert response.status_code == 500 and response.json is not None
    error = envelope_receiver.wait_for(lambda e: "exception" in e, item_type="event")
    assert error["exception"]["values"][-1]["type"] == "ExampleError"


def test_exception_through_a_child_span_is_reported_once(
    make_gateway: GatewayFactory, envelope_receiver: EnvelopeReceiver
) -> None:
    gateway = make_gateway()

    @gateway.app.get("/nested")
    def nested() -> flask.Response:
        with gateway.telemetry.tracer("test").start_as_current_span("work"):
            raise KeyError("missing")

    assert gateway.client.get("/nested").status_code == 500
    gateway.flush()
    envelope_receiver.wait_for(lambda e: "exception" in e, item_type="event")
    time.sleep(0.5)
    errors = [e for e in envelope_receiver.events() if "exception" in e]
    assert len(errors) == 1 and errors[0]["exception"]["values"][-1]["type"] == "KeyError"
