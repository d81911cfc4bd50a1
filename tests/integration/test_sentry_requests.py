"""What Sentry gets about a request of an instrumented app, now that tracegate's WSGI
layer makes the request's Sentry scope instead of sentry-sdk's WSGI middleware: the
request described on its events, a scope of its own, unhandled errors, sessions."""

from __future__ import annotations

from typing import Any

import flask
import sentry_sdk

from tests.harness import GatewayFactory
from tests.peers.envelope import EnvelopeReceiver

TRACE = "6bf92f3577b34da6a3ce929d0e0e4738"


class Broken(RuntimeError):
    pass


def _routes(app: flask.Flask) -> None:
    @app.get("/tagged/<name>")
    def tagged(name: str) -> dict[str, str]:
        sentry_sdk.set_tag("customer", name)
        sentry_sdk.add_breadcrumb(message=f"looked up {name}")
        sentry_sdk.capture_message(f"tagged {name}")
        return {"name": name}

    @app.get("/plain")
    def plain() -> dict[str, str]:
        sentry_sdk.capture_message("plain")
        return {}

    @app.get("/broken")
    def broken() -> dict[str, str]:
        raise Broken("nothing works")


def _message(receiver: EnvelopeReceiver, text: str) -> dict[str, Any]:
    return receiver.wait_for(
        lambda e: text in ((e.get("logentry") or {}).get("message"), e.get("message")),
        item_type="event",
    )


def test_each_request_has_a_sentry_scope_of_its_own(
    make_gateway: GatewayFactory, envelope_receiver: EnvelopeReceiver
) -> None:
    gateway = make_gateway()
    _routes(gateway.app)
    gateway.client.get("/tagged/acme")
    gateway.client.get("/plain")
    gateway.flush()

    tagged = _message(envelope_receiver, "tagged acme")
    assert tagged["tags"]["customer"] == "acme"
    assert [b.get("message") for b in tagged["breadcrumbs"]["values"]] == ["looked up acme"]
    plain = _message(envelope_receiver, "plain")
    assert "customer" not in plain["tags"]
    assert not (plain.get("breadcrumbs") or {}).get("values")


def test_events_describe_the_request_they_were_captured_in(
    make_gateway: GatewayFactory, envelope_receiver: EnvelopeReceiver
) -> None:
    gateway = make_gateway()
    _routes(gateway.app)
    gateway.client.get(
        "/tagged/zed?page=2",
        headers={"User-Agent": "probe/2.0", "Authorization": "Bearer sekrit-1234"},
    )
    gateway.flush()

    event = _message(envelope_receiver, "tagged zed")
    request = event["request"]
    assert request["method"] == "GET"
    assert request["url"] == "http://localhost/tagged/zed"
    assert request["query_string"] == "page=2"
    assert request["env"] == {"SERVER_NAME": "localhost", "SERVER_PORT": "80"}
    headers = {name.lower(): value for name, value in request["headers"].items()}
    assert headers["user-agent"] == "probe/2.0"
    assert headers["authorization"] == "[Filtered]"  # sentry-sdk's filter, PII off
    assert event["transaction"] == "tagged"  # the endpoint, by sentry-sdk's Flask signal


def test_an_unhandled_exception_reaches_sentry_once_linked(
    make_gateway: GatewayFactory, envelope_receiver: EnvelopeReceiver
) -> None:
    gateway = make_gateway()
    _routes(gateway.app)
    del gateway.app.error_handler_spec[None][None][Exception]  # no handler of the app's
    response = gateway.client.get(
        "/broken", headers={"traceparent": f"00-{TRACE}-00f067aa0ba902b7-00"}
    )
    gateway.flush()
    assert response.status_code == 500

    error = envelope_receiver.wait_for(lambda e: "exception" in e, item_type="event")
    assert error["exception"]["values"][-1]["type"] == "Broken"
    assert error["exception"]["values"][-1]["mechanism"]["handled"] is False
    # Unsampled, and still linked to its trace.
    assert error["contexts"]["trace"]["trace_id"] == TRACE
    assert error["request"]["url"] == "http://localhost/broken"
    assert len(envelope_receiver.events()) == 1


def test_requests_are_counted_as_sessions_of_the_release(
    make_gateway: GatewayFactory, envelope_receiver: EnvelopeReceiver
) -> None:
    gateway = make_gateway(SENTRY_RELEASE="shop@1.2.3")
    _routes(gateway.app)
    del gateway.app.error_handler_spec[None][None][Exception]
    for path in ("/plain", "/plain", "/broken"):
        gateway.client.get(path)
    gateway.flush()

    sessions = envelope_receiver.wait_for(lambda s: s["aggregates"], item_type="sessions")
    assert sessions["attrs"]["release"] == "shop@1.2.3"
    totals: dict[str, int] = {}
    for bucket in sessions["aggregates"]:
        for key in ("exited", "errored", "crashed"):
            totals[key] = totals.get(key, 0) + bucket.get(key, 0)
    # A message is not an error of its session; the unhandled exception crashes its own.
    assert totals == {"exited": 2, "errored": 0, "crashed": 1}
