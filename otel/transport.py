"""Sentry transports: a cheaper HTTP one, and one that also hands events to a sink.

- `CompactHttpTransport` is sentry-sdk's HTTP transport (its queue, rate limits,
  client reports and loss accounting) with a cheaper gzip and a cheaper POST.
- `sentry_transport` also hands each error and message event to a sink of ours. With
  a DSN it sends everything to Sentry as the HTTP transport does; without one it sends
  nothing anywhere, so events are still produced (and reach the sink, e.g. the local
  trace store, and Spotlight when configured) on a machine with no Sentry account.
"""

from __future__ import annotations

import io
import logging
import ssl
import zlib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import urllib3
from sentry_sdk.envelope import Envelope, Item
from sentry_sdk.transport import HttpTransport, Transport

from otel.counters import Counters
from otel.http1 import Origin

__all__ = ["CompactHttpTransport", "EventSink", "count_losses", "sentry_transport"]

logger = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any]], None]


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
    """

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
        raw = envelope.serialize()
        window = max(9, min(15, (len(raw) - 1).bit_length()))
        compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + window, 4)  # level 1, memLevel 4
        return "gzip", io.BytesIO(compressor.compress(raw) + compressor.flush())

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
        target = self._tracegate_targets.get(endpoint_type)
        if target is None:
            url = urlsplit(str(self._auth.get_api_url(endpoint_type)))
            target = url.path + (f"?{url.query}" if url.query else "")
            self._tracegate_targets[endpoint_type] = target
        return origin.post(target, body, headers)

    def kill(self) -> None:
        super().kill()
        origin: Origin | None = getattr(self, "_tracegate_origin", None)
        if origin is not None:
            origin.close()


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


def sentry_transport(sink: EventSink, dsn: str) -> type[Transport] | Transport:
    """The `transport=` value for `sentry_sdk.init`.

    sentry-sdk instantiates a transport class only when a DSN is set, so without one
    an instance is returned (the same instance serves forked children: it holds no
    thread and no connection of its own).
    """

    class TeeTransport(Transport):
        def __init__(self, options: dict[str, Any] | None = None) -> None:
            super().__init__(options)
            self._http = CompactHttpTransport(options) if options and options.get("dsn") else None

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
