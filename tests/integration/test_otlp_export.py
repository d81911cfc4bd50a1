"""The OTLP/HTTP export to a collector, as the collector got it: tracegate's encoder and
sender, with the collector's headers and compression from OpenTelemetry's variables."""

from __future__ import annotations

import pytest

from tests.harness import gateways
from tests.peers.otlp import OTLPReceiver

TRACE = "7bf92f3577b34da6a3ce929d0e0e4739"


@pytest.mark.parametrize("compression", ["gzip", "deflate", ""])
def test_the_collector_gets_its_headers_and_compression(
    otlp_receiver: OTLPReceiver, compression: str
) -> None:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
        "OTEL_EXPORTER_OTLP_HEADERS": "x-tenant=acme,authorization=Bearer%20collector-key",
        "OTEL_EXPORTER_OTLP_COMPRESSION": compression,
    }
    with gateways(env) as make:
        gateway = make()
        response = gateway.client.get(
            "/example", headers={"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}
        )
        assert response.status_code == 200
        gateway.flush()
        server = otlp_receiver.wait_for_span(lambda s: s.trace_id_hex == TRACE)
    assert server.name == "GET /example" and server.kind_name == "SERVER"
    assert server.resource["service.name"] == "tracegate-test"
    assert server.scope_name == "otel.flask"
    headers = otlp_receiver.request_headers[-1]
    assert headers["x-tenant"] == "acme"
    assert headers["authorization"] == "Bearer collector-key"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers.get("content-encoding", "") == compression
    assert headers["user-agent"].startswith("tracegate/")
