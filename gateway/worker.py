"""`tracegate worker`: an RQ worker with tracegate's traced classes.

Telemetry is set up in the worker process (and again, by the traced worker class, in
a spawned work horse); a forked work horse inherits it and flushes before it exits.
rq's warm shutdown (SIGTERM/SIGINT) finishes the current job; telemetry is flushed
after the worker stops. rq's worker quits on a Redis error outside its dequeue (a
Sentinel failover, a restarted Redis): this one waits for Redis and works again.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import redis
from rq.exceptions import StopRequested
from rq.worker import BaseWorker

import otel
from gateway.settings import Settings
from gateway.telemetry import connect, counter_board, start_telemetry
from otel.rq import (
    TracedJob,
    TracedQueue,
    TracedSimpleWorker,
    TracedSpawnWorker,
    TracedWorker,
)

__all__ = ["WORKER_CLASSES", "run_worker"]

logger = logging.getLogger(__name__)

WORKER_CLASSES = {
    "fork": "gateway.worker.GatewayWorker",
    "simple": "gateway.worker.GatewaySimpleWorker",
    "spawn": "gateway.worker.GatewaySpawnWorker",
}


class _GatewaySetup:
    """Telemetry as `tracegate worker` sets it up — the TOML file, the local trace store —
    also in a process that only rebuilds the worker: rq 3's spawned work horse."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if otel.active() is None:
            start_telemetry(Settings.from_env())
        super().__init__(*args, **kwargs)


class GatewayWorker(_GatewaySetup, TracedWorker):
    """The forking worker of `tracegate worker`."""


class GatewaySimpleWorker(_GatewaySetup, TracedSimpleWorker):
    """The in-process worker of `tracegate worker --worker-class simple`."""


if TracedSpawnWorker is not None:

    class GatewaySpawnWorker(_GatewaySetup, TracedSpawnWorker):
        """The spawning worker of `tracegate worker --worker-class spawn`."""


def load_worker_class(name: str) -> type[BaseWorker]:
    path = WORKER_CLASSES.get(name, name)
    module_name, _, attribute = path.rpartition(".")
    try:
        worker_class = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"--worker-class: cannot import {path!r} ({error})") from error
    if not (isinstance(worker_class, type) and issubclass(worker_class, BaseWorker)):
        raise ValueError(f"--worker-class: {path!r} is not an rq worker class")
    return worker_class


def run_worker(
    settings: Settings,
    queues: Sequence[str] = ("default",),
    worker_class: str = "fork",
    burst: bool = False,
) -> int:
    connection = connect(settings)
    telemetry, _ = start_telemetry(settings)
    counter_board(settings, telemetry)  # what it and its work horses lose, on /metrics
    cls = load_worker_class(worker_class)
    quick_exits = 0
    try:
        while True:
            worker = cls(
                [TracedQueue(name, connection=connection) for name in queues],
                connection=connection,
                job_class=TracedJob,
                queue_class=TracedQueue,
            )
            started = time.monotonic()
            try:
                worker.work(burst=burst, with_scheduler=True)
            except StopRequested:
                # rq's SIGTERM handler raised it where rq's loop does not catch it (the
                # signal came between two iterations, at its `while True`); rq's
                # teardown has run: this is the stop that was asked for.
                return 0
            except (redis.RedisError, OSError) as error:  # raised by rq's own teardown
                logger.warning("tracegate: the worker lost Redis: %s", error)
            if burst or _stopped(worker):
                return 0
            # rq quits on a Redis error outside its dequeue (a failover, a restart, a
            # network blip): wait for Redis and work again, unless it keeps quitting.
            quick_exits = quick_exits + 1 if time.monotonic() - started < 5 else 1
            try:
                if quick_exits > _MAX_QUICK_EXITS or not _await_redis(connection, worker):
                    return 0 if _stopped(worker) else 1
                # What the last work horse handed over under this worker's name (the
                # next worker gets a new one), if Redis went away before it was read.
                held = getattr(worker, "_signals_held", None)
                if held is not None:
                    with held():
                        worker._take_over_spans()  # type: ignore[attr-defined]
            except StopRequested:  # rq's handler, when SIGTERM comes while Redis is away
                return 0
            logger.warning("tracegate: Redis is back; the worker starts again")
    finally:
        telemetry.shutdown()


_MAX_QUICK_EXITS = 5


def _stopped(worker: BaseWorker) -> bool:
    """A warm or cold shutdown was asked for (rq marks an idle worker only by the date)."""
    return bool(worker._stop_requested or getattr(worker, "_shutdown_requested_date", None))


def _await_redis(connection: redis.Redis, worker: BaseWorker) -> bool:
    """True once Redis answers; False when a stop is asked for meanwhile (rq's signal
    handlers, still in place, mark the stopped worker)."""
    delay = 0.25
    while not _stopped(worker):
        try:
            connection.ping()
            return True
        except (redis.RedisError, OSError):
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
    return False
