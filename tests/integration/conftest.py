"""An in-process gateway wired to real peers: sentry-sdk's HTTP transport posts to a
local envelope receiver, the OTLP/HTTP exporter to a local OTLP receiver."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import flask
import pytest

import otel
from gateway.app import create_app
from gateway.settings import Settings
from tests.peers.envelope import EnvelopeReceiver
from tests.peers.otlp import OTLPReceiver


@dataclass
class Gateway:
    app: flask.Flask
    client: flask.testing.FlaskClient
    telemetry: otel.Telemetry

    def flush(self) -> None:
        assert self.telemetry.flush(5.0), "telemetry did not flush within 5 s"


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def make_gateway(
    envelope_receiver: EnvelopeReceiver, otlp_receiver: OTLPReceiver
) -> Iterator[GatewayFactory]:
    started: list[Gateway] = []

    def make(**env: str) -> Gateway:
        environ = {
            "SENTRY_DSN": envelope_receiver.dsn,
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
            "OTEL_SERVICE_NAME": "tracegate-test",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            **env,
        }
        app = create_app(Settings.from_env(environ))
        gateway = Gateway(app, app.test_client(), app.extensions["tracegate.telemetry"])
        started.append(gateway)
        return gateway

    yield make
    for gateway in started:
        gateway.telemetry.shutdown(timeout_s=2.0)
