"""`/metrics`: what the telemetry of every gateway and worker process lost, for Prometheus.

Each process counts its own losses (`otel.counters`); a forked work horse hands its
counts to its worker. A scrape reaches one gunicorn worker, so every process
publishes its counts to Redis (`tracegate:counters:<service>:<host>:<pid>`, every few
seconds, expiring when the process is gone) and `/metrics` shows them all, one series
per process (labels `service` and `process`) — never a sum, which would go backwards
when a process exits. Without Redis, `/metrics` shows this process only.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from typing import Any

import flask
import redis

from otel.counters import Counters, render_prometheus

__all__ = ["CounterBoard", "blueprint"]

logger = logging.getLogger(__name__)

_PREFIX = "tracegate:counters:"
blueprint = flask.Blueprint("metrics", __name__)


class CounterBoard:
    """Publishes this process's counters and reads everyone's."""

    PUBLISH_EVERY_S = 5.0
    TTL_S = 30

    def __init__(self, connection: redis.Redis | None, counters: Counters, service: str) -> None:
        self.connection = connection
        self.counters = counters
        self.service = service
        self._started_in: int | None = None
        self._stopped = threading.Event()

    @property
    def process(self) -> str:
        return f"{socket.gethostname()}:{os.getpid()}"

    def _key(self) -> str:
        return f"{_PREFIX}{self.service}:{self.process}"

    def _entry(self) -> dict[str, Any]:
        values = self.counters.dump()
        return {
            "service": self.service,
            "process": self.process,
            "values": json.loads(values) if values else [],
        }

    def publish(self) -> None:
        if self.connection is not None:
            self.connection.set(self._key(), json.dumps(self._entry()), ex=self.TTL_S)

    def start(self) -> None:
        """Publish every few seconds from a daemon thread (once per process)."""
        if self.connection is None or self._started_in == os.getpid():
            return
        self._started_in = os.getpid()
        threading.Thread(target=self._loop, name="tracegate-counters", daemon=True).start()

    def stop(self) -> None:
        """End the publishing thread (a process's telemetry is going away)."""
        self._stopped.set()

    def _loop(self) -> None:
        failing = False
        while not self._stopped.is_set():
            try:
                self.publish()
                failing = False
            except (redis.RedisError, OSError) as error:
                if not failing:  # once per outage, not every few seconds
                    logger.warning("tracegate: cannot publish counters: %s", error)
                failing = True
            self._stopped.wait(self.PUBLISH_EVERY_S)

    def collect(self) -> list[tuple[dict[str, str], dict[Any, int]]]:
        """Every live process's counts; this process's are read fresh."""
        entries = [self._entry()]
        if self.connection is None:
            return [_snapshot(entries[0])]
        try:
            keys = [k for k in self.connection.scan_iter(f"{_PREFIX}*", count=100)]
            own = self._key().encode()
            raws = self.connection.mget([k for k in keys if k != own]) if keys else []
            entries += [json.loads(raw) for raw in raws if raw]
        except (redis.RedisError, OSError, ValueError) as error:
            logger.warning("tracegate: cannot read other processes' counters: %s", error)
        return [_snapshot(entry) for entry in entries]


def _snapshot(entry: dict[str, Any]) -> tuple[dict[str, str], dict[Any, int]]:
    merged = Counters()
    merged.load(json.dumps(entry.get("values", [])).encode())
    labels = {"service": str(entry["service"]), "process": str(entry["process"])}
    return labels, merged.snapshot()


@blueprint.get("/metrics")
def metrics() -> flask.Response:
    board: CounterBoard = flask.current_app.extensions["tracegate.counters"]
    return flask.Response(render_prometheus(board.collect()), mimetype="text/plain; version=0.0.4")
