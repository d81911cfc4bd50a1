"""An in-process gateway wired to real peers: sentry-sdk's HTTP transport posts to a
local envelope receiver, the OTLP/HTTP exporter to a local OTLP receiver."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from tests.harness import GatewayFactory, gateways
from tests.peers.base import LOOPBACK
from tests.peers.envelope import EnvelopeReceiver
from tests.peers.otlp import OTLPReceiver
from tests.peers.redis import RedisServer


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


@pytest.fixture
def replicated_redis() -> Iterator[tuple[RedisServer, RedisServer]]:
    """A primary and one replica in sync with it."""
    with RedisServer() as primary:
        follow = ["--replicaof", LOOPBACK, str(primary.port), "--repl-diskless-sync-delay", "0"]
        with RedisServer(extra_args=follow) as replica, redis.Redis.from_url(replica.url) as r:
            deadline = time.monotonic() + 20
            while r.info("replication").get("master_link_status") != "up":
                assert time.monotonic() < deadline, "the replica did not sync"
                time.sleep(0.05)
            yield primary, replica
