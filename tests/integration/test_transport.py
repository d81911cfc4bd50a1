"""The Sentry HTTP transport's own POST (`otel.http1`) against a real HTTP server.

sentry-sdk's transport (its queue, worker thread, rate limits and loss records) sends
real envelopes; the server is a socket server whose answers each test writes byte by
byte, so every framing a Sentry, a relay or a proxy in front of them may answer with is
exercised. Assertions are on what the server received and what the transport counted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sentry_sdk.client import get_options
from sentry_sdk.envelope import Envelope

from otel.counters import Counters
from otel.http1 import Origin
from otel.transport import CompactHttpTransport, DeferredTransport, count_losses, http_transport
from tests.harness import tls_files
from tests.peers.envelope import parse_envelope
from tests.peers.rawhttp import Answer, RawHTTPServer, Request, answer


def _transport(
    dsn: str, pipeline: int = CompactHttpTransport.PIPELINE_DEPTH, **options: Any
) -> tuple[CompactHttpTransport, Counters]:
    transport = http_transport(pipeline)(get_options(dsn=dsn, **options))
    counters = Counters()
    count_losses(transport, counters)
    return transport, counters


def _envelope(kind: str = "event") -> tuple[Envelope, str]:
    event_id = uuid.uuid4().hex
    envelope = Envelope(headers={"event_id": event_id})
    if kind == "transaction":
        envelope.add_transaction(
            {"type": "transaction", "event_id": event_id, "transaction": "GET /x", "spans": []}
        )
    else:
        envelope.add_event({"event_id": event_id, "message": "hello", "level": "error"})
    return envelope, event_id


def _send(transport: CompactHttpTransport, count: int, kind: str = "event") -> list[str]:
    """Each envelope is sent after the one before it was answered."""
    sent = []
    for _ in range(count):
        envelope, event_id = _envelope(kind)
        transport.capture_envelope(envelope)
        transport.flush(10)
        sent.append(event_id)
    return sent


def _event_id(request: Request) -> str | None:
    """The envelope's event id; None for what sentry-sdk sends on its own (client
    reports of what it lost)."""
    event_id: str | None = parse_envelope(request.decoded).headers.get("event_id")
    return event_id


def _events(server: RawHTTPServer, count: int) -> list[Request]:
    """The first `count` envelopes with an event, once they have arrived."""
    return server.wait_for(count, where=lambda request: _event_id(request) is not None)


def _event_ids(requests: list[Request]) -> list[str | None]:
    return [_event_id(request) for request in requests]


@pytest.fixture
def server() -> Iterator[RawHTTPServer]:
    with RawHTTPServer() as peer:
        yield peer


def test_envelopes_go_one_after_another_on_one_kept_alive_connection(
    server: RawHTTPServer,
) -> None:
    transport, counters = _transport(f"http://public@127.0.0.1:{server.port}/42")
    sent = _send(transport, 5)
    requests = _events(server, 5)
    assert _event_ids(requests) == sent
    assert server.connections == 1 and {r.connection for r in requests} == {1}
    first = requests[0]
    assert first.line == "POST /api/42/envelope/ HTTP/1.1"
    assert first.headers["host"] == f"127.0.0.1:{server.port}"
    assert "sentry_key=public" in first.headers["x-sentry-auth"]
    assert first.headers["content-type"] == "application/x-sentry-envelope"
    assert first.headers["content-encoding"] == "gzip"
    assert first.headers["user-agent"].startswith("sentry.python/")
    assert counters.get("events_dropped") == 0
    transport.kill()


@pytest.mark.parametrize(
    ("reply", "connections"),
    [
        (answer(chunked=True), 1),
        (answer(headers={"Connection": "close"}), 3),
        (answer(version="HTTP/1.0", length=False), 3),  # the body runs to the end
        (answer(version="HTTP/1.0", headers={"Connection": "keep-alive"}), 1),
        (answer(status=204, body=b""), 1),
        (Answer(b"HTTP/1.1 100 Continue\r\n\r\n" + answer().raw), 1),
        (answer(headers={"X-Many": "x" * 60_000}), 1),
    ],
    ids=["chunked", "close", "http10-to-eof", "http10-keep-alive", "204", "100-continue", "big"],
)
def test_every_answer_framing_is_read_and_the_next_envelope_follows(
    reply: Answer, connections: int
) -> None:
    with RawHTTPServer(script=lambda request: reply) as server:
        transport, counters = _transport(f"http://public@127.0.0.1:{server.port}/42")
        sent = _send(transport, 3)
        assert _event_ids(_events(server, 3)) == sent
        assert server.connections == connections
        assert counters.get("events_dropped") == 0
        transport.kill()


def test_a_connection_the_server_dropped_while_idle_is_replaced_and_nothing_is_lost() -> None:
    # The server closes every connection after its answer without saying so, as an
    # idle timeout does: each next envelope meets a closed connection first.
    with RawHTTPServer(script=lambda request: answer(close_after=True)) as server:
        transport, counters = _transport(f"http://public@127.0.0.1:{server.port}/42")
        sent = _send(transport, 4)
        assert _event_ids(_events(server, 4)) == sent
        assert server.connections == 4
        assert counters.get("events_dropped") == 0
        transport.kill()


@pytest.mark.parametrize(
    "reply",
    [
        Answer(b"HELLO\r\n\r\n"),
        answer(headers={"Content-Length": "99999999"}, length=False),
        Answer(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n"),
        Answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", close_after=True),
    ],
    ids=["not-http", "huge-length", "too-many-headers", "bad-chunk", "short-body"],
)
def test_a_malformed_answer_loses_that_envelope_counted_and_the_next_one_arrives(
    reply: Answer,
) -> None:
    replies = iter([reply])
    with RawHTTPServer(script=lambda request: next(replies, answer())) as server:
        transport, counters = _transport(f"http://public@127.0.0.1:{server.port}/42")
        lost, delivered = _send(transport, 2)
        assert _event_ids(_events(server, 2)) == [lost, delivered]
        assert server.connections == 2  # the bad answer's connection was not reused
        assert counters.get("events_dropped", reason="network_error") == 1
        transport.kill()


@pytest.mark.parametrize(
    ("limit", "still_sent"),
    [({"x-sentry-RATE-limits": "60:transaction:key"}, True), ({"retry-after": "60"}, False)],
    ids=["transactions-limited", "all-limited"],
)
def test_rate_limits_in_the_answers_headers_are_obeyed(
    limit: dict[str, str], still_sent: bool
) -> None:
    replies = iter([answer(429, headers=limit)])
    with RawHTTPServer(script=lambda request: next(replies, answer())) as server:
        transport, counters = _transport(f"http://public@127.0.0.1:{server.port}/42")
        (first,) = _send(transport, 1, "transaction")  # answered 429: limits for 60 s
        _send(transport, 1, "transaction")  # not sent
        (event,) = _send(transport, 1, "event")  # sent unless everything is limited
        _events(server, 1)
        delivered = [r for r in server.requests if _event_id(r)]
        assert _event_ids(delivered) == ([first, event] if still_sent else [first])
        dropped = counters.get("events_dropped", reason="ratelimit_backoff")
        assert dropped == (1 if still_sent else 2)
        transport.kill()


def test_https_checks_the_certificate_against_sentry_sdks_ca_setting(tmp_path: Path) -> None:
    ca, cert, key = tls_files(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    with RawHTTPServer(tls=tls) as server:
        dsn = f"https://public@127.0.0.1:{server.port}/42"
        trusting, counters = _transport(dsn, ca_certs=str(ca))
        sent = _send(trusting, 2)
        assert _event_ids(_events(server, 2)) == sent
        assert counters.get("events_dropped") == 0
        trusting.kill()
        # Without the CA (certifi's bundle) the certificate is refused: nothing is sent.
        doubting, counters = _transport(dsn)
        _send(doubting, 1)
        assert len(server.requests) == 2
        assert counters.get("events_dropped", reason="network_error") == 1
        doubting.kill()


def test_through_a_proxy_sentry_sdks_own_pool_posts(server: RawHTTPServer) -> None:
    # Nothing listens at the DSN's port: only the proxy can deliver.
    transport, _ = _transport(
        "http://public@127.0.0.1:9/42", http_proxy=f"http://127.0.0.1:{server.port}"
    )
    sent = _send(transport, 1)
    (request,) = _events(server, 1)
    assert request.target == "http://127.0.0.1:9/api/42/envelope/"  # a forward proxy's form
    assert _event_ids([request]) == sent
    transport.kill()


def test_a_forked_child_posts_on_a_connection_of_its_own(server: RawHTTPServer) -> None:
    transport, _ = _transport(f"http://public@127.0.0.1:{server.port}/42")
    (before,) = _send(transport, 1)
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's result is what the server receives
        try:
            _send(transport, 1)
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    (after,) = _send(transport, 1)
    requests = _events(server, 3)
    by_id = dict(zip(_event_ids(requests), requests, strict=True))
    # The parent's connection outlived the child's use of the transport.
    assert by_id[before].connection == by_id[after].connection == 1
    assert [r.connection for r in requests if r not in (by_id[before], by_id[after])] == [2]
    transport.kill()


def test_a_child_forked_while_its_parent_waits_for_an_answer_posts_at_once() -> None:
    # The parent's sender thread is blocked reading an answer that does not come (it
    # holds the connection's reader lock) when the process forks, as a work horse is
    # forked while Sentry hangs: the child must not wait for that lock.
    released = threading.Event()

    def script(request: Request) -> Answer:
        if request.connection == 1:
            released.wait(30)
        return answer()

    with RawHTTPServer(script=script) as server:
        transport, _ = _transport(f"http://public@127.0.0.1:{server.port}/42")
        envelope, waiting = _envelope()
        transport.capture_envelope(envelope)
        deadline = time.monotonic() + 10
        while server.connections < 1 or transport._tracegate_origin._sock is None:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the parent did not post"
            time.sleep(0.01)
        time.sleep(0.2)  # the parent's sender thread is now reading
        child = os.fork()
        if child == 0:  # pragma: no cover - the child's result is what the server receives
            try:
                # sentry-sdk's queue counts the parent's unanswered envelope as unfinished
                # in the child too: its flush waits out its timeout whatever happens.
                transport.capture_envelope(_envelope()[0])
                transport.flush(2)
            finally:
                os._exit(0)
        try:
            deadline = time.monotonic() + 15
            while os.waitpid(child, os.WNOHANG) == (0, 0):
                assert time.monotonic() < deadline, "the forked child hung"
                time.sleep(0.05)
        finally:
            with contextlib.suppress(ChildProcessError):
                if os.waitpid(child, os.WNOHANG) == (0, 0):
                    os.kill(child, signal.SIGKILL)
                    os.waitpid(child, 0)
        (from_child,) = [r for r in _events(server, 1) if r.connection == 2]
        released.set()
        requests = _events(server, 2)
        assert {_event_id(r) for r in requests if r.connection == 1} == {waiting}
        assert _event_id(from_child) not in (None, waiting)
        transport.kill()


def test_kill_does_not_wait_for_a_server_that_never_answers() -> None:
    # At exit sentry-sdk kills its transport while an envelope may still wait for an
    # answer (a Sentry that hangs): the process must not stay for the 30 s timeout.
    released = threading.Event()

    def script(request: Request) -> Answer:
        released.wait(30)
        return answer()

    with RawHTTPServer(script=script) as server:
        transport, _ = _transport(f"http://public@127.0.0.1:{server.port}/42")
        transport.capture_envelope(_envelope()[0])
        deadline = time.monotonic() + 10
        while transport._tracegate_origin._sock is None:  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the transport did not post"
            time.sleep(0.01)
        time.sleep(0.2)  # its sender thread is now reading
        killing = threading.Thread(target=transport.kill, daemon=True)
        killing.start()
        killing.join(5)
        released.set()
        assert not killing.is_alive(), "kill waited for the answer"
        assert server.connections == 1


def test_a_missing_ca_bundle_fails_the_send_counted_not_the_start(tmp_path: Path) -> None:
    # As with sentry-sdk's own transport: the CA bundle is read when a connection is
    # made (a forked work horse that makes a transport may never connect), so a bad
    # path costs the envelopes, counted, and never the application's start.
    with RawHTTPServer() as server:
        transport, counters = _transport(
            f"https://public@127.0.0.1:{server.port}/42", ca_certs=str(tmp_path / "none.pem")
        )
        _send(transport, 1)
        assert not [r for r in server.requests if _event_id(r)]
        assert counters.get("events_dropped", reason="network_error") == 1
        transport.kill()


def _queue_behind_a_slow_first_answer(
    server: RawHTTPServer, transport: CompactHttpTransport, count: int
) -> list[str]:
    """`count` envelopes captured while the first one waits for its answer: the
    worker finds the rest queued together."""
    sent = []
    for _ in range(count):
        envelope, event_id = _envelope()
        transport.capture_envelope(envelope)
        sent.append(event_id)
    transport.flush(10)
    return sent


def _slow_first(script: Any = None) -> Any:
    answered = []

    def reply(request: Request) -> Answer:
        answered.append(request)
        if len(answered) == 1:
            time.sleep(0.3)  # the rest queue up meanwhile
        return script(request, len(answered)) if script else answer()

    return reply


def test_envelopes_queued_together_are_pipelined_and_each_answer_is_handled() -> None:
    with RawHTTPServer(script=_slow_first()) as server:
        transport, counters = _transport(f"http://public@127.0.0.1:{server.port}/42")
        sent = _queue_behind_a_slow_first_answer(server, transport, 12)
        requests = _events(server, 12)
        assert _event_ids(requests) == sent
        assert server.connections == 1
        # The first went alone on the fresh connection; the rest were written together.
        assert not requests[0].ahead
        assert any(request.ahead for request in requests[1:])
        assert counters.get("events_dropped") == 0
        transport.kill()


def test_with_a_pipeline_of_one_each_envelope_waits_for_the_answer_before_it() -> None:
    # TRACEGATE_SENTRY_PIPELINE=1: for a proxy in front of Sentry that mishandles
    # pipelined requests.
    with RawHTTPServer(script=_slow_first()) as server:
        transport, counters = _transport(f"http://public@127.0.0.1:{server.port}/42", 1)
        sent = _queue_behind_a_slow_first_answer(server, transport, 6)
        requests = _events(server, 6)
        assert _event_ids(requests) == sent
        assert server.connections == 1 and not any(r.ahead for r in requests)
        assert counters.get("events_dropped") == 0
        transport.kill()


def test_what_a_server_did_not_answer_before_it_closed_is_sent_again_once() -> None:
    # The server drops the connection after its fourth answer without saying so, with
    # pipelined requests still unread: they go again on a fresh connection.
    script = _slow_first(lambda request, number: answer(close_after=number == 4))
    with RawHTTPServer(script=script) as server:
        transport, counters = _transport(f"http://public@127.0.0.1:{server.port}/42")
        sent = _queue_behind_a_slow_first_answer(server, transport, 10)
        requests = _events(server, 10)
        assert _event_ids(requests) == sent  # each once, in order
        assert [r.connection for r in requests] == [1] * 4 + [2] * 6
        assert any(r.ahead for r in requests[:4])
        assert counters.get("events_dropped") == 0
        transport.kill()


def test_a_server_that_drops_pipelined_connections_gets_one_request_at_a_time() -> None:
    # As some proxies do: each connection's second answer is its last, and whatever
    # else came on it is expected again. Pipelining stops, nothing is lost.
    seen: dict[int, int] = {}

    def second_is_last(request: Request, number: int) -> Answer:
        seen[request.connection] = seen.get(request.connection, 0) + 1
        return answer(close_after=seen[request.connection] == 2)

    with RawHTTPServer(script=_slow_first(second_is_last)) as server:
        transport, counters = _transport(f"http://public@127.0.0.1:{server.port}/42")
        sent = _queue_behind_a_slow_first_answer(server, transport, 10)
        requests = _events(server, 10)
        assert _event_ids(requests) == sent
        assert requests[0].connection == requests[1].connection == 1 and requests[1].ahead
        assert not any(r.ahead for r in requests[2:])  # one at a time from then on
        assert counters.get("events_dropped") == 0
        transport.kill()


def test_a_malformed_answer_in_a_pipelined_batch_loses_only_its_own_envelope() -> None:
    script = _slow_first(lambda r, number: Answer(b"HELLO\r\n\r\n") if number == 3 else answer())
    with RawHTTPServer(script=script) as server:
        transport, counters = _transport(f"http://public@127.0.0.1:{server.port}/42")
        sent = _queue_behind_a_slow_first_answer(server, transport, 8)
        _events(server, 8)
        transport.flush(10)
        # The requests after the unreadable answer may have been read by the server
        # before the client gave up the connection, and are sent again: Sentry keeps
        # the first of two envelopes with one event id.
        assert set(_event_ids([r for r in server.requests if _event_id(r)])) == set(sent)
        assert counters.get("events_dropped", reason="network_error") == 1
        transport.kill()


def test_a_pipelined_batch_to_a_server_that_stops_answering_costs_one_timeout_each() -> None:
    hang = threading.Event()

    def script(request: Request, number: int) -> Answer:
        if number >= 3:
            hang.wait(5)
        return answer()

    with RawHTTPServer(script=_slow_first(script)) as server:
        transport, counters = _transport(f"http://public@127.0.0.1:{server.port}/42")
        transport._tracegate_origin._timeout_s = 0.5  # type: ignore[union-attr]
        started = time.monotonic()
        sent = _queue_behind_a_slow_first_answer(server, transport, 4)
        transport.flush(10)
        hang.set()
        # Two answered; the third timed out; the fourth was sent again, alone, and
        # timed out too: every envelope is delivered or counted, none waits forever.
        assert _event_ids(_events(server, 2))[:2] == sent[:2]
        assert counters.get("events_dropped", reason="network_error") == 2
        assert time.monotonic() - started < 5
        transport.kill()


def test_a_request_that_cannot_be_written_fails_alone_in_a_pipelined_batch(
    server: RawHTTPServer,
) -> None:
    origin = Origin("http", "127.0.0.1", server.port)
    origin.post("/warm", b"0", {})  # an answered HTTP/1.1 connection: the batch pipelines
    results = origin.post_many(
        [("/a", b"1", {}), ("/b", b"2", {"X-Bad": "line\r\nbreak"}), ("/c", b"3", {})]
    )
    assert isinstance(results[1], ValueError)
    assert [getattr(r, "status", None) for r in (results[0], results[2])] == [200, 200]
    arrived = server.wait_for(3)
    assert [r.target for r in arrived] == ["/warm", "/a", "/c"] and arrived[1].ahead
    origin.close()


def test_a_batch_the_client_could_not_post_is_counted_lost_not_dropped_silently(
    server: RawHTTPServer,
) -> None:
    transport, counters = _transport(f"http://public@127.0.0.1:{server.port}/42")
    _send(transport, 1)  # the connection is up
    origin = transport._tracegate_origin
    assert origin is not None

    def broken(requests: Any) -> list[Any]:
        raise RuntimeError("a fault inside the client")

    origin.post_many = broken  # type: ignore[method-assign]
    holding, gate = threading.Event(), threading.Event()

    def hold() -> None:  # the worker waits here while the five queue up behind it
        holding.set()
        gate.wait(5)

    transport._worker.submit(hold)
    assert holding.wait(5)
    for _ in range(5):
        transport.capture_envelope(_envelope()[0])
    gate.set()
    transport.flush(10)
    assert counters.get("events_dropped", reason="network_error") == 5
    assert len(_events(server, 1)) == 1  # only the one sent before
    transport.kill()


def test_envelopes_captured_a_moment_apart_share_a_batch() -> None:
    # Under load envelopes arrive one by one: each would wake the worker for a request
    # of its own. A lone one lingers for those right behind it.
    with RawHTTPServer() as server:
        transport, counters = _transport(f"http://public@127.0.0.1:{server.port}/42")
        _send(transport, 1)  # the fresh connection's first request goes alone
        sent = []
        for _ in range(8):
            envelope, event_id = _envelope()
            transport.capture_envelope(envelope)
            sent.append(event_id)
            time.sleep(0.0002)
        transport.flush(10)
        requests = _events(server, 9)[1:]
        assert _event_ids(requests) == sent
        assert server.connections == 1
        assert any(request.ahead for request in requests)
        assert counters.get("events_dropped") == 0
        transport.kill()


def test_a_flush_does_not_wait_out_the_linger() -> None:
    lingering = type("Lingering", (http_transport(16),), {"LINGER_S": 120.0})
    with RawHTTPServer() as server:
        transport = lingering(get_options(dsn=f"http://public@127.0.0.1:{server.port}/42"))
        sent = _send(transport, 3)  # each one flushed
        assert _event_ids(_events(server, 3)) == sent
        transport.kill()


def test_a_deferred_transport_is_made_by_the_first_envelope_and_delivers_it(
    server: RawHTTPServer,
) -> None:
    # What a forked work horse gets in place of its parent's transport (see
    # `Telemetry.after_fork`): nothing is made for a flush or a kill with nothing sent.
    inherited, _ = _transport(f"http://public@127.0.0.1:{server.port}/42")
    made: list[CompactHttpTransport] = []

    def make() -> CompactHttpTransport:
        transport, _ = _transport(f"http://public@127.0.0.1:{server.port}/42")
        made.append(transport)
        return transport

    deferred = DeferredTransport(make, inherited)
    assert deferred.parsed_dsn is inherited.parsed_dsn
    deferred.flush(1)
    assert deferred.is_healthy() and made == []
    envelope, event_id = _envelope()
    deferred.capture_envelope(envelope)
    deferred.flush(10)
    assert len(made) == 1
    assert _event_ids(_events(server, 1)) == [event_id]
    deferred.record_lost_event("queue_overflow", data_category="error")
    assert len(made) == 1  # made once
    deferred.kill()
    inherited.kill()
