"""The server span tracegate's own WSGI layer makes, as the OTLP receiver got it: its
name, kind, parent, HTTP attributes (stable semantic conventions), status, and the
requests it leaves alone."""

from __future__ import annotations

import flask
import pytest

from tests.harness import GatewayFactory
from tests.peers.otlp import OTLPReceiver

TRACE = "5bf92f3577b34da6a3ce929d0e0e4737"
PARENT = "00f067aa0ba902b8"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"


class Boom(RuntimeError):
    pass


def _routes(app: flask.Flask) -> None:
    @app.get("/things/<int:n>")
    def thing(n: int) -> dict[str, int]:
        return {"n": n}

    @app.get("/things/broken")
    def broken() -> dict[str, int]:
        raise Boom("no things today")

    @app.get("/things/unavailable")
    def unavailable() -> tuple[dict[str, str], int]:
        return {"state": "down"}, 503


def test_a_routed_request_makes_a_server_span_in_stable_conventions(
    make_gateway: GatewayFactory, otlp_receiver: OTLPReceiver
) -> None:
    gateway = make_gateway()
    _routes(gateway.app)
    response = gateway.client.get(
        "/things/7?colour=blue",
        headers={"traceparent": TRACEPARENT, "User-Agent": "probe/1.0"},
    )
    gateway.flush()
    assert response.status_code == 200

    span = otlp_receiver.wait_for_span(lambda s: s.trace_id_hex == TRACE)
    assert span.name == "GET /things/<int:n>"
    assert span.kind_name == "SERVER" and span.parent_span_id_hex == PARENT
    assert span.scope_name == "otel.flask"
    assert span.status_name == "UNSET" and span.events == []
    assert span.attributes == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": "/things/7",
        "url.query": "colour=blue",
        "server.address": "localhost",
        "server.port": 80,
        "network.protocol.version": "1.1",
        "client.address": "127.0.0.1",
        "user_agent.original": "probe/1.0",
        "http.route": "/things/<int:n>",
        "http.response.status_code": 200,
    }
    assert response.headers["traceresponse"] == f"00-{TRACE}-{span.span_id_hex}-01"


def test_an_unrouted_request_is_named_by_its_method_alone(
    make_gateway: GatewayFactory, otlp_receiver: OTLPReceiver
) -> None:
    gateway = make_gateway()
    response = gateway.client.get("/no/such/page/42", headers={"traceparent": TRACEPARENT})
    gateway.flush()
    assert response.status_code == 404

    span = otlp_receiver.wait_for_span(lambda s: s.trace_id_hex == TRACE)
    # A 404 is the client's error: the server span is not failed, and its name does
    # not carry the raw path (one name per unknown URL is a cardinality leak).
    assert span.name == "GET" and span.status_name == "UNSET"
    assert span.attributes["http.response.status_code"] == 404
    assert span.attributes["url.path"] == "/no/such/page/42"
    assert "http.route" not in span.attributes and "error.type" not in span.attributes


@pytest.mark.parametrize("handled", ["by the gateway", "by nobody", "propagated"])
def test_an_exception_fails_the_span_once_with_its_type(
    make_gateway: GatewayFactory, otlp_receiver: OTLPReceiver, handled: str
) -> None:
    gateway = make_gateway()
    _routes(gateway.app)
    if handled != "by the gateway":  # an app without an error handler of its own
        del gateway.app.error_handler_spec[None][None][Exception]
    gateway.app.config["PROPAGATE_EXCEPTIONS"] = handled == "propagated"
    try:
        response = gateway.client.get("/things/broken", headers={"traceparent": TRACEPARENT})
        assert response.status_code == 500
    except Boom:
        assert handled == "propagated"
    gateway.flush()

    span = otlp_receiver.wait_for_span(lambda s: s.trace_id_hex == TRACE)
    assert span.name == "GET /things/broken"
    assert span.status_name == "ERROR"
    assert span.status_message == (
        "Boom" if handled == "by the gateway" else "Boom: no things today"
    )
    assert span.attributes["error.type"] == "Boom"
    if handled != "propagated":  # the server, not Flask, answers a propagated one
        assert span.attributes["http.response.status_code"] == 500
    exceptions = [attributes for name, attributes in span.events if name == "exception"]
    assert len(exceptions) == 1
    assert exceptions[0]["exception.type"].endswith("Boom")
    assert exceptions[0]["exception.message"] == "no things today"


def test_a_5xx_answer_fails_the_span_with_its_status_code(
    make_gateway: GatewayFactory, otlp_receiver: OTLPReceiver
) -> None:
    gateway = make_gateway()
    _routes(gateway.app)
    response = gateway.client.get("/things/unavailable", headers={"traceparent": TRACEPARENT})
    gateway.flush()
    assert response.status_code == 503

    span = otlp_receiver.wait_for_span(lambda s: s.trace_id_hex == TRACE)
    assert span.status_name == "ERROR" and span.events == []
    assert span.attributes["error.type"] == "503"


def test_an_unknown_method_is_reported_as_other(
    make_gateway: GatewayFactory, otlp_receiver: OTLPReceiver
) -> None:
    gateway = make_gateway()
    _routes(gateway.app)
    response = gateway.client.open(
        "/things/7", method="PURGE", headers={"traceparent": TRACEPARENT}
    )
    gateway.flush()
    assert response.status_code == 405

    span = otlp_receiver.wait_for_span(lambda s: s.trace_id_hex == TRACE)
    assert span.name == "HTTP"  # Flask matched no route for that method
    assert span.attributes["http.request.method"] == "_OTHER"
    assert span.attributes["http.request.method_original"] == "PURGE"


@pytest.mark.parametrize(
    ("query", "recorded"),
    [
        ("sig=abc123&page=2", "sig=REDACTED&page=2"),
        (
            "page=2&X-Goog-Signature=zz&AWSAccessKeyId=AK",
            "page=2&X-Goog-Signature=REDACTED&AWSAccessKeyId=REDACTED",
        ),
        ("signature=kept&design=kept", "signature=kept&design=kept"),
    ],
)
def test_signatures_in_the_query_are_redacted(
    make_gateway: GatewayFactory, otlp_receiver: OTLPReceiver, query: str, recorded: str
) -> None:
    gateway = make_gateway()
    _routes(gateway.app)
    gateway.client.get(f"/things/1?{query}", headers={"traceparent": TRACEPARENT})
    gateway.flush()

    span = otlp_receiver.wait_for_span(lambda s: s.trace_id_hex == TRACE)
    assert span.attributes["url.query"] == recorded


def test_excluded_urls_get_no_span_and_no_trace_headers(
    make_gateway: GatewayFactory, otlp_receiver: OTLPReceiver
) -> None:
    gateway = make_gateway(OTEL_PYTHON_FLASK_EXCLUDED_URLS=r"/things/\d+$,/nothing")
    _routes(gateway.app)
    skipped = gateway.client.get("/things/3", headers={"traceparent": TRACEPARENT})
    traced = gateway.client.get("/things/3?x=1", headers={"traceparent": TRACEPARENT})
    gateway.flush()

    assert skipped.status_code == 200 and "traceresponse" not in skipped.headers
    assert "traceresponse" in traced.headers
    span = otlp_receiver.wait_for_span(lambda s: s.trace_id_hex == TRACE)
    assert span.attributes["url.query"] == "x=1"
    assert len([s for s in otlp_receiver.spans if s.trace_id_hex == TRACE]) == 1


def test_dup_opt_in_adds_the_old_attribute_names(
    make_gateway: GatewayFactory, otlp_receiver: OTLPReceiver
) -> None:
    gateway = make_gateway(OTEL_SEMCONV_STABILITY_OPT_IN="messaging, http/dup")
    _routes(gateway.app)
    gateway.client.get("/things/7?a=b", headers={"traceparent": TRACEPARENT})
    gateway.flush()

    span = otlp_receiver.wait_for_span(lambda s: s.trace_id_hex == TRACE)
    assert span.attributes["http.request.method"] == "GET"
    old = {
        key: span.attributes.get(key)
        for key in (
            "http.method",
            "http.target",
            "http.status_code",
            "http.scheme",
            "http.flavor",
            "net.peer.ip",
            "net.host.name",
        )
    }
    assert old == {
        "http.method": "GET",
        "http.target": "/things/7?a=b",
        "http.status_code": 200,
        "http.scheme": "http",
        "http.flavor": "1.1",
        "net.peer.ip": "127.0.0.1",
        "net.host.name": "localhost",
    }
