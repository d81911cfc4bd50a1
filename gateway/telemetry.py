"""The gateway's and its workers' telemetry: `otel.setup` plus the local trace store."""

from __future__ import annotations

from typing import Any

import redis
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import otel
from gateway.settings import Settings
from gateway.store import StoreExporter, TraceStore, event_summary

__all__ = ["connect", "start_telemetry"]


def connect(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis, socket_connect_timeout=2.0, socket_timeout=5.0)


def start_telemetry(settings: Settings) -> tuple[otel.Telemetry, TraceStore | None]:
    """Set up telemetry for this process; spans and Sentry events also go to the store."""
    if not settings.store:
        return otel.setup(settings.telemetry), None
    # The store's own client, with short timeouts: it writes from inside requests and
    # jobs (Sentry events), which a slow or absent Redis must not hold up.
    store_connection = redis.Redis.from_url(
        settings.redis, socket_connect_timeout=0.25, socket_timeout=1.0
    )
    store = TraceStore(store_connection, settings.store_limits)

    def keep_event(event: dict[str, Any]) -> None:
        summary = event_summary(event)
        if summary is not None:
            store.add_event(summary)

    telemetry = otel.setup(
        settings.telemetry,
        processors=[BatchSpanProcessor(StoreExporter(store))],
        event_sink=keep_event,
    )
    return telemetry, store
