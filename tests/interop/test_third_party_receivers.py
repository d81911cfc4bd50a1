"""The same promise, checked by receivers we did not write: Spotlight's sidecar for
Sentry envelopes and oteltap for OTLP/HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import GatewayFactory, gateways
from tests.peers.oteltap import OtelTap
from tests.peers.spotlight import SpotlightSidecar

pytestmark = pytest.mark.interop

TRACE = "5bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "10f067aa0ba902b7"


@pytest.fixture
def make_gateway(spotlight: SpotlightSidecar, oteltap: OtelTap) -> Iterator[GatewayFactory]:
    env = {"SENTRY_SPOTLIGHT": spotlight.url, "OTEL_EXPORTER_OTLP_ENDPOINT": oteltap.endpoint}
    with gateways(env) as make:
        yield make


def _trace_id(payload: dict[str, Any]) -> str:
    return str(payload["contexts"]["trace"]["trace_id"])


def test_traceparent_reaches_spotlight_and_oteltap(
    make_gateway: GatewayFactory, spotlight: SpotlightSidecar, oteltap: OtelTap
) -> None:
    gateway = make_gateway()
    headers = {"traceparent": f"00-{TRACE}-{PARENT}-01"}
    assert gateway.client.get("/example", headers=headers).status_code == 200
    assert gateway.client.get("/example/error", headers=headers).status_code == 500
    gateway.flush()

    message = spotlight.wait_for(
        lambda e: e["message"] == "Example route accessed", item_type="event"
    )
    assert _trace_id(message) == TRACE
    assert message["contexts"]["trace"]["parent_span_id"] == PARENT
    error = spotlight.wait_for(lambda e: "exception" in e, item_type="event")
    assert _trace_id(error) == TRACE
    transaction = spotlight.wait_for(
        lambda t: t["transaction"] == "GET /example", item_type="transaction"
    )
    assert _trace_id(transaction) == TRACE
    assert transaction["contexts"]["trace"]["parent_span_id"] == PARENT

    span = oteltap.wait_for_span(lambda s: s.name == "GET /example")
    assert (span.trace_id_hex, span.parent_span_id_hex) == (TRACE, PARENT)
    assert span.span_id_hex == transaction["contexts"]["trace"]["span_id"]
    assert span.attributes["sentry.event_id"] == message["event_id"]


def test_unsampled_inbound_reaches_neither_as_trace_but_errors_link(
    make_gateway: GatewayFactory, spotlight: SpotlightSidecar, oteltap: OtelTap
) -> None:
    gateway = make_gateway()
    # A trace id no other test sends: oteltap is shared by the session, and a span of
    # TRACE (sampled by the test before) was once found here after the clear.
    unsampled, other = "7" * 32, "6" * 32
    gateway.client.get("/example/error", headers={"traceparent": f"00-{unsampled}-{PARENT}-00"})
    gateway.client.get("/example", headers={"traceparent": f"00-{other}-{PARENT}-01"})
    gateway.flush()
    # The error is linked to the unsampled trace (waited for by its trace id: a late
    # event of the test before must not be taken for it).
    spotlight.wait_for(lambda e: "exception" in e and _trace_id(e) == unsampled, item_type="event")
    spotlight.wait_for(lambda t: _trace_id(t) == other, item_type="transaction")
    oteltap.wait_for_span(lambda s: s.trace_id_hex == other)
    assert not [t for t in spotlight.transactions() if _trace_id(t) == unsampled]
    assert not [s for s in oteltap.spans if s.trace_id_hex == unsampled]


@pytest.mark.parametrize(
    ("headers", "trace_id", "parent"),
    [
        ({"sentry-trace": f"{TRACE}-{PARENT}-1"}, TRACE, PARENT),  # continued
        ({"X-Trace-ID": "5bf92f35-77b3-4da6-a3ce-929d0e0e4736"}, TRACE, ""),  # adopted
        ({"traceparent": f"00-{TRACE.upper()}-{PARENT}-01"}, None, ""),  # invalid: new trace
    ],
    ids=["sentry-trace", "x-trace-id", "malformed"],
)
def test_every_inbound_spelling_holds_at_spotlight_and_oteltap(
    headers: dict[str, str],
    trace_id: str | None,
    parent: str,
    make_gateway: GatewayFactory,
    spotlight: SpotlightSidecar,
    oteltap: OtelTap,
) -> None:
    gateway = make_gateway()
    response = gateway.client.get("/example", headers=headers)
    assert response.status_code == 200 and response.json is not None
    expected = trace_id or response.json["trace_id"]
    if trace_id is None:
        assert expected != TRACE  # the malformed header started a trace of its own
    gateway.flush()
    message = spotlight.wait_for(
        lambda e: e["message"] == "Example route accessed", item_type="event"
    )
    transaction = spotlight.wait_for(
        lambda t: t["transaction"] == "GET /example", item_type="transaction"
    )
    span = oteltap.wait_for_span(lambda s: s.name == "GET /example")
    assert _trace_id(message) == _trace_id(transaction) == span.trace_id_hex == expected
    assert transaction["contexts"]["trace"].get("parent_span_id", "") == parent
    assert span.parent_span_id_hex == parent
    assert span.span_id_hex == transaction["contexts"]["trace"]["span_id"]
