"""An in-process gateway wired to real peers: sentry-sdk's HTTP transport posts to a
local envelope receiver, the OTLP/HTTP exporter to a local OTLP receiver."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness import GatewayFactory, gateways
from tests.peers.envelope import EnvelopeReceiver
from tests.peers.otlp import OTLPReceiver


@pytest.fixture
def make_gateway(
    envelope_receiver: EnvelopeReceiver, otlp_receiver: OTLPReceiver
) -> Iterator[GatewayFactory]:
    env = {
        "SENTRY_DSN": envelope_receiver.dsn,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
    }
    with gateways(env) as make:
        yield make
