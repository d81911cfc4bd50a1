"""`tracegate worker`: an RQ worker with tracegate's traced classes.

Telemetry is set up in the worker process (and again, by the traced worker class, in
a spawned work horse); a forked work horse inherits it and flushes before it exits.
rq's warm shutdown (SIGTERM/SIGINT) finishes the current job; telemetry is flushed
after the worker stops.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any

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
    worker = load_worker_class(worker_class)(
        [TracedQueue(name, connection=connection) for name in queues],
        connection=connection,
        job_class=TracedJob,
        queue_class=TracedQueue,
    )
    try:
        worker.work(burst=burst, with_scheduler=True)
    finally:
        telemetry.shutdown()
    return 0
