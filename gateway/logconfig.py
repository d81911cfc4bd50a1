"""Logging for the gateway's processes: one line per request and per job, with trace ids.

`TRACEGATE_LOG_FORMAT=text` (default) writes readable lines ending in
`trace=… span=…`; `json` writes one JSON object per line with `trace_id`,
`trace_id_uuid` and `span_id`. Every record of the process carries them
(`otel.logs.install`), so a user's own loggers and Sentry's breadcrumbs do too.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import IO

import flask

from otel.forks import at_fork
from otel.logs import JsonFormatter, TextFormatter, install

__all__ = ["ForkSafeStreamHandler", "configure_logging", "log_requests"]

access = logging.getLogger("tracegate.access")


class ForkSafeStreamHandler(logging.StreamHandler):
    """A stream handler that no fork interrupts mid-line.

    A forking RQ worker has threads that log (an exporter retrying against a collector
    that is down). A fork while one of them is inside the stream's write leaves the
    stream's buffer lock held in the child for good: the work horse hangs at its first
    log line, until rq kills it at the job's timeout. Here the fork waits for the line
    being written; the child gets a fresh handler lock.
    """

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        at_fork(self, before="acquire", after_in_parent="release", after_in_child="_renew_lock")

    def _renew_lock(self) -> None:
        self.lock = threading.RLock()


def configure_logging(log_format: str) -> None:
    install()
    handler = ForkSafeStreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def log_requests(app: flask.Flask) -> None:
    """One access line per request, written while the request's span is current."""
    install()

    @app.before_request
    def started() -> None:
        flask.g.tracegate_started = time.perf_counter()

    @app.after_request
    def finished(response: flask.Response) -> flask.Response:
        began = flask.g.get("tracegate_started")
        duration_ms = round((time.perf_counter() - began) * 1000, 2) if began else None
        request = flask.request
        # A decoded %0A in the path must not start a forged line in the log.
        path = request.path.encode("unicode_escape").decode("ascii")
        access.info(
            "%s %s %s %sms",
            request.method,
            path,
            response.status_code,
            duration_ms,
            extra={
                "http_method": request.method,
                "http_path": path,
                "http_status": response.status_code,
                "duration_ms": duration_ms,
            },
        )
        return response
