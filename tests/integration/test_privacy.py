"""PII stays out of telemetry by default: no request body, cookie or Authorization value
reaches a Sentry envelope, an exported span or a Spotlight sidecar, also when the request
fails and sentry-sdk attaches the request to its error event."""

from __future__ import annotations

import json

import pytest
import sentry_sdk
from sentry_sdk.tracing_utils import has_tracing_enabled

from tests.harness import GatewayFactory, gateways
from tests.peers.envelope import EnvelopeReceiver
from tests.peers.otlp import OTLPReceiver

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SECRETS = ("body-secret-4711", "cookie-secret-4712", "auth-secret-4713")


def _leaks(payload: bytes) -> list[str]:
    return [secret for secret in SECRETS if secret.encode() in payload]


@pytest.mark.parametrize("path", ["/example/error", "/v1/jobs"])
def test_no_body_cookie_or_authorization_in_envelopes_or_spans(
    path: str,
    make_gateway: GatewayFactory,
    envelope_receiver: EnvelopeReceiver,
    otlp_receiver: OTLPReceiver,
) -> None:
    gateway = make_gateway(
        TRACEGATE_DEMO_TASKS="1", REDIS_URL="redis://127.0.0.1:1/0", TRACEGATE_STORE="0"
    )
    gateway.app.config["PROPAGATE_EXCEPTIONS"] = False
    response = gateway.client.open(
        path,
        method="GET" if path == "/example/error" else "POST",
        data=json.dumps({"task": "echo", "args": ["body-secret-4711"]}),
        headers={
            "content-type": "application/json",
            "traceparent": f"00-{TRACE}-00f067aa0ba902b7-01",
            "cookie": "session=cookie-secret-4712",
            "authorization": "Bearer auth-secret-4713",
        },
    )
    # A failing route (500) and a job that cannot be queued (503, Redis is down).
    assert response.status_code in (500, 503)
    gateway.flush()
    assert _leaks(response.data) == []
    server = otlp_receiver.wait_for_span(
        lambda s: s.trace_id_hex == TRACE and s.kind_name == "SERVER"
    )
    spans = [s for s in otlp_receiver.spans if s.trace_id_hex == TRACE]
    assert server in spans
    assert _leaks(repr([(s.name, s.attributes, s.events) for s in spans]).encode()) == []
    if path == "/example/error":
        event = envelope_receiver.wait_for(
            lambda e: e["contexts"]["trace"]["trace_id"] == TRACE, item_type="event"
        )
        assert event["request"]["method"] == "GET"  # the request is described ...
        assert "cookies" not in event["request"] and not event["request"].get("data")
        headers = {name.lower(): value for name, value in event["request"]["headers"].items()}
        assert "cookie" not in headers and headers.get("authorization") == "[Filtered]"
    else:
        envelope_receiver.wait_for(
            lambda e: e["contexts"]["trace"]["trace_id"] == TRACE, item_type="transaction"
        )
    for envelope in envelope_receiver.envelopes:  # ... but nothing secret reaches Sentry
        for item in envelope.items:
            assert _leaks(item.payload) == [], item.type


def test_spotlight_without_a_dsn_keeps_sentrys_own_tracing_and_pii_off() -> None:
    # sentry-sdk switches on its own tracing, PII and full sampling for a DSN-less
    # Spotlight; tracegate turns them back off, so OpenTelemetry still decides alone.
    with gateways({}) as make:
        make(SENTRY_SPOTLIGHT="http://127.0.0.1:1/stream")
        options = sentry_sdk.get_client().options
        assert sentry_sdk.get_client().spotlight is not None
        assert not has_tracing_enabled(options)
        assert options["send_default_pii"] is False
        assert options["error_sampler"] is None
