"""A Sentry transport that also hands each error and message event to a sink of ours.

With a DSN it sends everything to Sentry as sentry-sdk's own HTTP transport would;
without one it sends nothing anywhere, so events are still produced (and reach the
sink, e.g. the local trace store, and Spotlight when configured) on a machine with no
Sentry account.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from sentry_sdk.envelope import Envelope, Item
from sentry_sdk.transport import HttpTransport, Transport

from otel.counters import Counters

__all__ = ["EventSink", "count_losses", "sentry_transport"]

logger = logging.getLogger(__name__)

EventSink = Callable[[dict[str, Any]], None]


def sentry_transport(sink: EventSink, dsn: str) -> type[Transport] | Transport:
    """The `transport=` value for `sentry_sdk.init`.

    sentry-sdk instantiates a transport class only when a DSN is set, so without one
    an instance is returned (the same instance serves forked children: it holds no
    thread and no connection of its own).
    """

    class TeeTransport(Transport):
        def __init__(self, options: dict[str, Any] | None = None) -> None:
            super().__init__(options)
            self._http = HttpTransport(options) if options and options.get("dsn") else None

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
