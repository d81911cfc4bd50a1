"""Project-wide pytest fixtures: the real test peers from ``tests/peers``.

Cheap HTTP receivers are function-scoped (a fresh port per test, nothing left over
from an earlier test). Peers that are processes or native servers run once per
session; their function-scoped fixtures hand them out cleared:

* ``envelope_receiver`` - Sentry envelope endpoint; give ``.dsn`` to sentry-sdk
* ``otlp_receiver``     - OTLP/HTTP traces endpoint; ``.endpoint`` / ``.traces_endpoint``
* ``redis_server``      - session redis-server; ``redis_url`` flushes it around each test
* ``spotlight``         - the Spotlight sidecar (session process ``spotlight_sidecar``)
* ``oteltap``           - the oteltap receiver (session receiver ``oteltap_receiver``)
* ``free_port``         - a TCP port on 127.0.0.1 that was free a moment ago
* ``silent_server``     - a URL that accepts connections and never answers

A peer that cannot run here (no redis-server, no node >= 20) fails the test with a
clear message: these tests are never skipped.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, TypeVar

import pytest
import redis

from tests.peers import (
    EnvelopeReceiver,
    OTLPReceiver,
    PeerUnavailableError,
    RedisServer,
    SpotlightSidecar,
)
from tests.peers import free_port as _free_port
from tests.peers.base import PeerContext

if TYPE_CHECKING:
    from tests.peers.oteltap import OtelTap

_P = TypeVar("_P", bound=PeerContext)


def _running(peer: _P) -> Iterator[_P]:
    """Start ``peer`` for a fixture, turning 'cannot run here' into a test failure."""
    try:
        peer.start()
    except PeerUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield peer
    finally:
        peer.stop()


@pytest.fixture
def free_port() -> int:
    return _free_port()


@pytest.fixture
def envelope_receiver() -> Iterator[EnvelopeReceiver]:
    yield from _running(EnvelopeReceiver())


@pytest.fixture
def otlp_receiver() -> Iterator[OTLPReceiver]:
    yield from _running(OTLPReceiver())


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    yield from _running(RedisServer())


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """URL of db 0 on the session redis-server, empty before and after the test."""
    with redis.Redis.from_url(redis_server.url) as client:
        client.flushall()
        yield redis_server.url
        client.flushall()


@pytest.fixture(scope="session")
def spotlight_sidecar() -> Iterator[SpotlightSidecar]:
    yield from _running(SpotlightSidecar())


@pytest.fixture
def spotlight(spotlight_sidecar: SpotlightSidecar) -> SpotlightSidecar:
    spotlight_sidecar.clear()
    return spotlight_sidecar


@pytest.fixture(scope="session")
def oteltap_receiver() -> Iterator[OtelTap]:
    from tests.peers.oteltap import OtelTap  # loads oteltap's native library: only when used

    yield from _running(OtelTap())


@pytest.fixture
def oteltap(oteltap_receiver: OtelTap) -> OtelTap:
    oteltap_receiver.clear()
    return oteltap_receiver


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers: the worst collector or Sentry there is."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()
