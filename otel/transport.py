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

from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import HttpTransport, Transport

__all__ = ["EventSink", "sentry_transport"]

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
