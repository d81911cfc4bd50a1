"""tracegate's OTLP/HTTP export: each span batch encoded once (`otel.otlp`), sent to
the collector and, with `TRACEGATE_SENTRY_TRACES=otlp`, to Sentry's OTLP endpoint.

One batch processor encodes each batch once and hands the same bytes to one `Poster`
per destination. Each poster sends from a thread of its own and keeps at most
`backlog` batches waiting, so a collector or a Sentry that hangs or refuses costs the
other one (and the batch processor) nothing: what does not fit is dropped, oldest
first, and counted in `spans_dropped{exporter=..., reason="queue_full"}`.

Used when the collector speaks OTLP/HTTP protobuf and no TLS client or credential
setting of OpenTelemetry's exporter is in play (`provider.build_fanout` decides);
otherwise OpenTelemetry's exporter sends to the collector, and Sentry's OTLP endpoint
gets a batch processor of its own.
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
import zlib
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel.counters import Counters
from otel.forks import at_fork, keep_inherited
from otel.otlp import encode_spans

__all__ = ["FanoutExporter", "Poster", "post_with_retries"]

logger = logging.getLogger(__name__)

_RETRY_STATUSES = frozenset((429, 500, 502, 503, 504))


def post_with_retries(
    session: Any, url: str, body: bytes, timeout_s: float, stopped: threading.Event
) -> str | None:
    """POST `body`; a 429 or 5xx answer and a failed connection are retried with a
    growing pause until `timeout_s`, as OpenTelemetry's exporter does. None on success,
    else what went wrong."""
    import requests

    deadline = time.monotonic() + timeout_s
    pause = 0.5
    while True:
        remaining = deadline - time.monotonic()
        try:
            response = session.post(url, data=body, timeout=max(remaining, 0.01))
        except requests.RequestException as error:
            problem = str(error)
        else:
            response.close()
            if response.ok:
                return None
            problem = f"HTTP {response.status_code}"
            if response.status_code not in _RETRY_STATUSES:
                return problem
        remaining = deadline - time.monotonic()
        if remaining <= pause or stopped.wait(pause):
            return problem
        pause *= 2


class Poster:
    """Sends encoded OTLP bodies to one URL, from its own thread, `backlog` at most waiting.

    The thread and the HTTP session are made on first use in each process: a forked
    child (an RQ work horse) neither writes to its parent's pooled connections nor
    pays for a thread it never uses.
    """

    def __init__(
        self,
        name: str,
        url: str,
        headers: Mapping[str, str],
        timeout_s: float,
        counters: Counters,
        *,
        compression: str = "",
        backlog: int = 4,
    ) -> None:
        self.name = name
        self.url = url
        self._headers = {"Content-Type": "application/x-protobuf", **headers}
        if compression in ("gzip", "deflate"):
            self._headers["Content-Encoding"] = compression
        self._compression = compression
        self._timeout_s = timeout_s
        self._counters = counters
        self._backlog = max(1, backlog)
        self._stopped = threading.Event()
        self._renew()
        at_fork(self, after_in_child="_renew")

    def _renew(self) -> None:
        """Fresh locks and nothing waiting: in a forked child the parent's batches are the
        parent's, and a lock its sender held at the fork would stay locked forever."""
        keep_inherited(getattr(self, "_queue", None))
        self._cond = threading.Condition()
        self._queue: deque[tuple[bytes, int]] = deque()
        self._busy = False
        self._thread: threading.Thread | None = None  # the sender, in this process

    def submit(self, body: bytes, count: int) -> None:
        if self._stopped.is_set():
            self._counters.add("spans_dropped", count, exporter=self.name, reason="shutdown")
            return
        with self._cond:
            if self._thread is None:
                self._start()  # the first batch of this process
            if len(self._queue) >= self._backlog:
                _, lost = self._queue.popleft()
                self._counters.add("spans_dropped", lost, exporter=self.name, reason="queue_full")
            self._queue.append((body, count))
            self._cond.notify()

    def drain(self, timeout_s: float) -> bool:
        """Wait until nothing is waiting or being sent; False at the deadline."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._queue or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def stop(self, wait_s: float = 1.0) -> None:
        """Stop sending; wait up to `wait_s` for the sender to close its connections.

        Closed here, the session's connection pools go while the interpreter is whole;
        left to its teardown, urllib3's finalizer of a pool failed there ("catching
        classes that do not inherit from BaseException") and printed a traceback as the
        process exited.
        """
        self._stopped.set()
        with self._cond:
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(wait_s)

    def _start(self) -> None:
        import requests

        self._session = requests.Session()
        self._session.headers.update(self._headers)
        name = f"tracegate-{self.name}-sender"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopped.is_set():
                    self._cond.wait()
                if not self._queue:
                    break
                body, count = self._queue.popleft()
                self._busy = True
            try:
                problem = post_with_retries(
                    self._session, self.url, self._encode(body), self._timeout_s, self._stopped
                )
            except Exception as error:  # a sender never dies of one batch
                problem = repr(error)
            if problem is not None:
                logger.warning(
                    "tracegate: export of %d spans to %s failed: %s", count, self.name, problem
                )
                self._counters.add(
                    "spans_dropped", count, exporter=self.name, reason="export_failed"
                )
            with self._cond:
                self._busy = False
                self._cond.notify_all()
        self._session.close()

    def _encode(self, body: bytes) -> bytes:
        if self._compression == "gzip":
            return gzip.compress(body, compresslevel=6)
        if self._compression == "deflate":
            return zlib.compress(body)
        return body


class FanoutExporter(SpanExporter):
    """Encodes each batch once and gives the bytes to every poster."""

    def __init__(self, posters: Sequence[Poster]) -> None:
        self.posters = tuple(posters)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        body = encode_spans(spans)
        for poster in self.posters:
            poster.submit(body, len(spans))
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        deadline = time.monotonic() + timeout_millis / 1000
        return all(poster.drain(max(0.0, deadline - time.monotonic())) for poster in self.posters)

    def shutdown(self) -> None:
        for poster in self.posters:
            poster.stop()
