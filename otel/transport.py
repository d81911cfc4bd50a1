"""Sentry transports: a cheaper HTTP one, and one that also hands events to a sink.

- `CompactHttpTransport` is sentry-sdk's HTTP transport (its queue, rate limits,
  client reports and loss accounting) with a cheaper gzip and a cheaper POST.
- `sentry_transport` also hands each error and message event to a sink of ours. With
  a DSN it sends everything to Sentry as the HTTP transport does; without one it sends
  nothing anywhere, so events are still produced (and reach the sink, e.g. the local
  trace store, and Spotlight when configured) on a machine with no Sentry account.
"""

from __future__ import annotations

import functools
import io
import logging
import ssl
import threading
import zlib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import urllib3
from sentry_sdk import worker as sentry_worker
from sentry_sdk._queue import EmptyError
from sentry_sdk.consts import EndpointType
from sentry_sdk.envelope import Envelope, Item, PayloadRef
from sentry_sdk.transport import HttpTransport, Transport
from sentry_sdk.utils import capture_internal_exceptions
from sentry_sdk.worker import BackgroundWorker

from otel.counters import Counters
from otel.http1 import Origin
from otel.semconv import json_encoder

__all__ = [
    "CompactHttpTransport",
    "DeferredTransport",
    "EventSink",
    "ReadyItem",
    "count_losses",
    "http_transport",
    "sentry_transport",
]

logger = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any]], None]
_encode = json_encoder(check_circular=False)
# What sentry-sdk's worker.kill() queues to stop its thread.
_TERMINATOR = getattr(sentry_worker, "_TERMINATOR", object())


class ReadyItem(Item):
    """An envelope item whose wire form is made once, with its JSON payload text.

    `json` is the payload as sentry-sdk reads it to count a lost item; `body` is its
    JSON text. The item's header line (type, content type, length) and the body are
    encoded here, so serialising the envelope only joins bytes.
    """

    def __init__(self, body: bytes, json: dict[str, Any], type: str) -> None:
        super().__init__(payload=PayloadRef(bytes=body, json=json), type=type)
        headers = {**self.headers, "length": len(body)}
        self.wire = _encode(headers).encode() + b"\n" + body + b"\n"

    def serialize_into(self, f: Any) -> None:
        f.write(self.wire)


def envelope_bytes(envelope: Envelope) -> bytes:
    """`envelope.serialize()`, joining the wire form of `ReadyItem`s as it is."""
    try:
        parts = [_encode(envelope.headers).encode(), b"\n"]
    except (TypeError, ValueError):  # a header only sentry-sdk's encoder takes
        return envelope.serialize()
    for item in envelope.items:
        parts.append(item.wire if isinstance(item, ReadyItem) else item.serialize())
    return b"".join(parts)


class CompactHttpTransport(HttpTransport):
    """sentry-sdk's HTTP transport with a cheaper gzip and a cheaper POST.

    - gzip: sentry-sdk gzips every envelope at level 9 with a 32 KiB window, which
      sets up about 256 KiB of compressor state per envelope: about 60 µs for a 2 KB
      transaction, more than building it. This one sizes the window to the envelope and
      compresses at level 1 with less state: a sixth of the time, 10-15 % more bytes.
      An explicit `transport_compression_level` (sentry-sdk's `_experiments`) is kept.
    - POST: sentry-sdk posts each envelope through urllib3 (about 210 µs of CPU); this
      one through `otel.http1.Origin`, one keep-alive connection (about 25 µs), with
      the TLS settings sentry-sdk would use (`ca_certs`, `cert_file`, `key_file`, their
      environment variables, certifi) and its socket options. Through a proxy (the
      `http_proxy` / `https_proxy` options or the environment's), sentry-sdk's urllib3
      pool still posts. Everything around the POST — rate limits, 413/429/5xx
      handling, client reports, lost-event records — is sentry-sdk's.
    - Sending: sentry-sdk's worker thread takes one envelope, posts it, waits for the
      answer and yields the GIL, so each envelope costs it several GIL hand-overs; in
      a busy process each one waits for a request thread's switch interval, and at a
      few hundred envelopes per second per process its queue of 100 overflows. This
      transport's worker (`_BatchingWorker`, the same queue, flush and kill) takes
      everything queued, up to `PIPELINE_DEPTH` envelopes, and posts them pipelined on
      the one connection (`Origin.post_many`); each answer then goes through
      sentry-sdk's own handling, in order. A rate limit an answer sets applies from
      the next batch: envelopes already written are answered (and counted) by Sentry.
    """

    PIPELINE_DEPTH = 16
    # How long a lone envelope waits for others to go in its batch.
    LINGER_S = 0.005

    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__(options)
        experiments = options.get("_experiments") or {}
        self._tracegate_gzip = (
            getattr(self, "_compression_algo", None) == "gzip"
            and "transport_compression_level" not in experiments
            and "transport_zlib_compression_level" not in experiments
        )
        self._tracegate_targets: dict[Any, str] = {}

    def _serialize_envelope(self, envelope: Envelope) -> tuple[str | None, io.BytesIO]:
        if not self._tracegate_gzip:
            result: tuple[str | None, io.BytesIO] = super()._serialize_envelope(envelope)
            return result
        raw = envelope_bytes(envelope)
        window = max(9, min(15, (len(raw) - 1).bit_length()))
        compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + window, 4)  # level 1, memLevel 4
        return "gzip", io.BytesIO(compressor.compress(raw) + compressor.flush())

    def _create_worker(self, options: dict[str, Any]) -> Any:
        return _BatchingWorker(
            self, options["transport_queue_size"], self.PIPELINE_DEPTH, self.LINGER_S
        )

    def capture_envelope(self, envelope: Envelope) -> None:
        if not self._worker.submit(_Send(envelope)):
            self.on_dropped_event("full_queue")
            for item in envelope.items:
                self.record_lost_event("queue_overflow", item=item)

    def _send_batch(self, envelopes: list[Envelope]) -> None:
        """Post `envelopes`, pipelined, through sentry-sdk's preparation and answer
        handling (rate limits, 413/429/5xx, lost-event records)."""
        origin: Origin | None = getattr(self, "_tracegate_origin", None)
        if origin is None or len(envelopes) == 1:
            for envelope in envelopes:
                with capture_internal_exceptions():
                    self._send_envelope(envelope)
            return
        prepared: list[tuple[Envelope, bytes, dict[str, str]]] = []
        for envelope in envelopes:
            with capture_internal_exceptions():
                ready = self._prepare_envelope(envelope)
                if ready is not None:
                    kept, body, headers = ready
                    self._update_headers(headers)
                    prepared.append((kept, body.getvalue(), headers))
        target = self._target(EndpointType.ENVELOPE)
        try:
            answers = origin.post_many([(target, body, headers) for _, body, headers in prepared])
        except Exception as error:  # every envelope of the batch is then counted as lost
            logger.warning("tracegate: posting envelopes failed: %s", error)
            answers = [error] * len(prepared)
        for (envelope, _, _), answer in zip(prepared, answers, strict=True):
            with capture_internal_exceptions():
                if isinstance(answer, Exception):
                    logger.debug("tracegate: an envelope got no answer: %s", answer)
                    self._handle_request_error(envelope=envelope, loss_reason="network")
                else:
                    self._handle_response(response=answer, envelope=envelope)

    def _target(self, endpoint_type: Any) -> str:
        target = self._tracegate_targets.get(endpoint_type)
        if target is None:
            url = urlsplit(str(self._auth.get_api_url(endpoint_type)))
            target = url.path + (f"?{url.query}" if url.query else "")
            self._tracegate_targets[endpoint_type] = target
        return target

    def _make_pool(self) -> Any:
        pool = super()._make_pool()
        # sentry-sdk's own decision: a plain PoolManager means no proxy is in the way.
        self._tracegate_origin = _origin(self) if type(pool) is urllib3.PoolManager else None
        return pool

    def _request(
        self, method: str, endpoint_type: Any, body: Any, headers: Mapping[str, str]
    ) -> Any:
        origin: Origin | None = getattr(self, "_tracegate_origin", None)
        if origin is None or method != "POST" or not isinstance(body, bytes):
            return super()._request(method, endpoint_type, body, headers)
        return origin.post(self._target(endpoint_type), body, headers)

    def kill(self) -> None:
        super().kill()
        origin: Origin | None = getattr(self, "_tracegate_origin", None)
        if origin is not None:
            origin.close()


class _Send:
    """A queued envelope; what else `_BatchingWorker` finds queued is sentry-sdk's
    (its client-report flush, its kill request)."""

    __slots__ = ("envelope",)

    def __init__(self, envelope: Envelope) -> None:
        self.envelope = envelope


class _BatchingWorker(BackgroundWorker):
    """sentry-sdk's background worker (its queue, thread, flush and kill), taking
    whatever is queued at once: consecutive envelopes are posted as one batch.

    An envelope that finds the queue nearly empty waits up to `linger_s` for others
    to join it, so that under load each wake-up of this thread, each write and each
    read carries several envelopes, not one; a flush or a kill cuts the wait short.
    """

    def __init__(
        self, transport: CompactHttpTransport, queue_size: int, depth: int, linger_s: float
    ) -> None:
        super().__init__(queue_size=queue_size)
        self._transport = transport
        self._depth = max(1, depth)
        self._linger_s = linger_s if self._depth > 1 else 0.0
        self._hurry = threading.Event()

    def flush(self, timeout: float, callback: Any = None) -> None:
        self._hurry.set()
        try:
            super().flush(timeout, callback)
        finally:
            self._hurry.clear()

    def kill(self) -> None:
        self._hurry.set()  # for good: the worker is going away
        super().kill()

    def _target(self) -> None:
        queue = self._queue
        while True:
            batch = [queue.get()]
            if self._linger_s and queue.qsize() < self._depth - 1:
                self._hurry.wait(self._linger_s)
            while len(batch) < self._depth:
                try:
                    batch.append(queue.get_nowait())
                except EmptyError:
                    break
            try:
                stop = self._run(batch)
            finally:
                for _ in batch:
                    queue.task_done()
            if stop:
                return

    def _run(self, batch: list[Any]) -> bool:
        """Run `batch` in order; True when it holds the kill request."""
        sends: list[Envelope] = []
        stop = False
        for item in batch:
            if isinstance(item, _Send):
                sends.append(item.envelope)
                continue
            self._send(sends)
            if item is _TERMINATOR:
                stop = True
                break
            try:
                item()
            except Exception:
                logger.error("tracegate: a Sentry transport task failed", exc_info=True)
        else:
            self._send(sends)
        return stop

    def _send(self, sends: list[Envelope]) -> None:
        if not sends:
            return
        try:
            self._transport._send_batch(sends)
            self._transport._flush_client_reports()
        except Exception:
            logger.error("tracegate: sending envelopes failed", exc_info=True)
        sends.clear()


def _origin(transport: HttpTransport) -> Origin | None:
    """The DSN's origin with sentry-sdk's TLS and socket settings; None when those
    settings cannot be read (another sentry-sdk): urllib3 posts then."""
    dsn = transport.parsed_dsn
    try:
        options = transport._get_pool_options()
    except Exception:  # a sentry-sdk whose pool options are not what this reads
        return None
    if dsn is None or dsn.scheme not in ("http", "https") or not dsn.host:
        return None

    def tls() -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=options.get("ca_certs") or None)
        if options.get("cert_file"):
            context.load_cert_chain(options["cert_file"], options.get("key_file") or None)
        return context

    return Origin(
        dsn.scheme,
        dsn.host,
        int(dsn.port),
        timeout_s=float(getattr(transport, "TIMEOUT", 30)),
        make_tls=tls,
        socket_options=options.get("socket_options") or (),
    )


@functools.cache
def http_transport(pipeline: int) -> type[CompactHttpTransport]:
    """`CompactHttpTransport` writing up to `pipeline` envelopes at once (one class per
    depth: sentry-sdk makes a transport from it again in every work horse)."""
    if pipeline == CompactHttpTransport.PIPELINE_DEPTH:
        return CompactHttpTransport
    return type("CompactHttpTransport", (CompactHttpTransport,), {"PIPELINE_DEPTH": pipeline})


def sentry_transport(
    sink: EventSink, dsn: str, pipeline: int = CompactHttpTransport.PIPELINE_DEPTH
) -> type[Transport] | Transport:
    """The `transport=` value for `sentry_sdk.init`.

    sentry-sdk instantiates a transport class only when a DSN is set, so without one
    an instance is returned (the same instance serves forked children: it holds no
    thread and no connection of its own).
    """

    http = http_transport(pipeline)

    class TeeTransport(Transport):
        def __init__(self, options: dict[str, Any] | None = None) -> None:
            super().__init__(options)
            self._http = http(options) if options and options.get("dsn") else None

        def capture_envelope(self, envelope: Envelope) -> None:
            for item in envelope.items:
                if item.type != "event":
                    continue
                try:
                    payload = item.payload.json
                    if isinstance(payload, dict):
                        sink(payload)
                except Exception as error:  # the sink never costs the event its delivery
                    logger.warning("tracegate: the Sentry event sink failed: %s", error)
            if self._http is not None:
                self._http.capture_envelope(envelope)

        def flush(self, timeout: float, callback: Any | None = None) -> None:
            if self._http is not None:
                self._http.flush(timeout, callback)

        def kill(self) -> None:
            if self._http is not None:
                self._http.kill()

        def record_lost_event(self, *args: Any, **kwargs: Any) -> None:
            if self._http is not None:
                self._http.record_lost_event(*args, **kwargs)

        def is_healthy(self) -> bool:
            return self._http.is_healthy() if self._http is not None else True

    if dsn:
        return TeeTransport
    return TeeTransport({"dsn": None})


# What `events_dropped` counts: the events a user would look for in Sentry.
_EVENT_CATEGORIES = ("error", "transaction", "default")


class DeferredTransport(Transport):
    """A forked child's Sentry transport, made when the child first sends something.

    The child must not use its parent's (a queue mid-flight, a thread that does not run
    here), and most RQ work horses send nothing: their spans are handed to the worker,
    which builds the transactions. Making sentry-sdk's HTTP transport (its connection
    pool, the proxy settings read from the environment, a queue) cost each work horse
    about 1.7 ms and 300 page faults. `make` is called on the first envelope or lost
    event; until then a flush or kill has nothing to do.
    """

    def __init__(self, make: Callable[[], Transport | None], inherited: Transport) -> None:
        # Not Transport.__init__: the DSN is the inherited transport's, already parsed.
        self.options = inherited.options
        self.parsed_dsn = inherited.parsed_dsn
        self._make: Callable[[], Transport | None] | None = make
        self._made: Transport | None = None

    def _transport(self) -> Transport | None:
        make, self._make = self._make, None
        if make is not None:
            self._made = make()
        return self._made

    def capture_envelope(self, envelope: Envelope) -> None:
        transport = self._transport()
        if transport is not None:
            transport.capture_envelope(envelope)

    def record_lost_event(
        self,
        reason: str,
        data_category: Any = None,
        item: Item | None = None,
        *,
        quantity: int = 1,
    ) -> None:
        transport = self._transport()
        if transport is not None:
            transport.record_lost_event(reason, data_category, item, quantity=quantity)

    def flush(self, timeout: float, callback: Any = None) -> None:
        if self._made is not None:
            self._made.flush(timeout, callback)

    def kill(self) -> None:
        if self._made is not None:
            self._made.kill()

    def is_healthy(self) -> bool:
        return self._made is None or self._made.is_healthy()


def count_losses(transport: Transport | None, counters: Counters) -> None:
    """Count the events `transport` gives up on into `events_dropped`.

    sentry-sdk reports each lost envelope item through `record_lost_event` (queue
    full, network error, 5xx, rate-limit back-off); a 429 is only passed to
    `on_dropped_event`, since Sentry itself records that outcome.
    """
    if transport is None or getattr(transport, "_tracegate_counted", False):
        return
    inner = getattr(transport, "_http", None)  # a TeeTransport counts through its HTTP one
    target = inner if isinstance(inner, Transport) else transport
    record_lost_event = target.record_lost_event
    on_dropped_event = getattr(target, "on_dropped_event", None)

    def counting_record(
        reason: str,
        data_category: Any = None,
        item: Item | None = None,
        *,
        quantity: int = 1,
    ) -> None:
        category = item.data_category if item is not None else data_category
        if category in _EVENT_CATEGORIES:
            counters.add("events_dropped", 1 if item is not None else quantity, reason=reason)
        record_lost_event(reason, data_category, item, quantity=quantity)

    def counting_dropped(reason: str) -> None:
        if reason == "status_429":
            counters.add("events_dropped", reason="rate_limited")
        if on_dropped_event is not None:
            on_dropped_event(reason)

    target.record_lost_event = counting_record  # type: ignore[method-assign]
    target.on_dropped_event = counting_dropped  # type: ignore[attr-defined]
    transport._tracegate_counted = True  # type: ignore[attr-defined]
