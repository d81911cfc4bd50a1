"""The gateway's and its workers' telemetry: `otel.setup` plus the local trace store."""

from __future__ import annotations

from typing import Any

import redis

import otel
from gateway import redisconn
from gateway.metrics import CounterBoard
from gateway.settings import Settings
from gateway.store import StoreExporter, TraceStore, event_summary
from otel.counters import Counters
from otel.provider import CountingBatchSpanProcessor

__all__ = ["connect", "counter_board", "start_telemetry"]


def connect(settings: Settings) -> redis.Redis:
    return redisconn.connect(settings.redis)


def counter_board(settings: Settings, telemetry: otel.Telemetry) -> CounterBoard:
    """This process's counters, published through Redis when `REDIS_URL` names one
    (see `gateway.metrics`); without it, `/metrics` shows this process only."""
    connection = None
    if settings.redis_url:
        # Short timeouts: a scrape or the publishing thread must not hang on a dead Redis.
        connection = redisconn.connect(settings.redis_url, connect_timeout=0.25, timeout=1.0)
    board = CounterBoard(connection, telemetry.counters, telemetry.config.service_name)
    board.start()
    return board


def start_telemetry(settings: Settings) -> tuple[otel.Telemetry, TraceStore | None]:
    """Set up telemetry for this process; spans and Sentry events also go to the store."""
    if not settings.store:
        return otel.setup(settings.telemetry), None
    # The store's own client, with short timeouts: it writes from inside requests and
    # jobs (Sentry events), which a slow or absent Redis must not hold up.
    store_connection = redisconn.connect(settings.redis, connect_timeout=0.25, timeout=1.0)
    store = TraceStore(store_connection, settings.store_limits)

    def keep_event(event: dict[str, Any]) -> None:
        summary = event_summary(event)
        if summary is not None:
            store.add_event(summary)

    counters = Counters()
    telemetry = otel.setup(
        settings.telemetry,
        processors=[CountingBatchSpanProcessor(StoreExporter(store), counters, "store")],
        event_sink=keep_event,
        counters=counters,
    )
    return telemetry, store
