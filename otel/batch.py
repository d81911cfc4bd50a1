"""The batch span processor: the SDK's behaviour, minus a thread in every forked child.

OpenTelemetry's `BatchSpanProcessor` restarts its export thread in every forked child.
An RQ work horse hands its spans to the worker and never exports (see `otel.rq`), yet
each fork paid for that thread: starting it waits for the new thread to be scheduled,
a few milliseconds per job on a busy machine. This processor renews its locks and
empties its queue after a fork (cheap) and starts its thread on the first span a
process gives it. Otherwise it does what the SDK's does — `OTEL_BSP_SCHEDULE_DELAY`,
`_MAX_QUEUE_SIZE` and `_MAX_EXPORT_BATCH_SIZE`, sampled spans only, the oldest span
dropped from a full queue, instrumentation suppressed while exporting — and counts what
it loses in `spans_dropped`. An export is bounded by its exporter's own timeout
(`OTEL_EXPORTER_OTLP_TIMEOUT`), as the SDK's processor in effect is too.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence

from opentelemetry import context as otel_context
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from otel.counters import Counters
from otel.forks import at_fork, keep_inherited

__all__ = ["CountingBatchSpanProcessor"]

logger = logging.getLogger(__name__)


def _setting(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name, "").strip()
    try:
        value = int(raw) if raw else default
    except ValueError:
        value = -1
    if value <= 0:
        logger.warning("tracegate: %s=%r is not valid; using %d", name, raw, default)
        return default
    return value


class CountingBatchSpanProcessor(SpanProcessor):
    """Batches sampled spans for `exporter`; losses go to `spans_dropped{exporter=name}`
    (and to each of `also`, destinations the same batches feed)."""

    def __init__(
        self,
        exporter: SpanExporter,
        counters: Counters,
        name: str,
        *,
        also: tuple[str, ...] = (),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.exporter = exporter
        self._counters = counters
        self._names = (name, *also)
        self._delay_s = _setting(env, "OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self._max_queue = _setting(env, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self._max_batch = min(_setting(env, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512), self._max_queue)
        self._shutdown = False
        self._renew()
        at_fork(self, after_in_child="_renew")

    def _renew(self) -> None:
        """Fresh locks and an empty queue: in a new process, the parent's are the parent's
        (a lock its export thread held at the fork would stay locked here forever). The
        parent's queued spans stay where they are (`keep_inherited`)."""
        keep_inherited(getattr(self, "_queue", None))
        self._cond = threading.Condition()
        self._export_lock = threading.Lock()
        self._queue: deque[ReadableSpan] = deque()
        self._started = False  # the export thread, in this process

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        if not (span.context and span.context.trace_flags.sampled) or self._shutdown:
            return
        with self._cond:
            if not self._started:
                self._started = True
                threading.Thread(
                    target=self._run, name="tracegate-batch-export", daemon=True
                ).start()
            if len(self._queue) >= self._max_queue:
                self._queue.popleft()
                for name in self._names:
                    self._counters.add("spans_dropped", exporter=name, reason="queue_full")
            self._queue.append(span)
            if len(self._queue) >= self._max_batch:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._shutdown and len(self._queue) < self._max_batch:
                    self._cond.wait(self._delay_s)
                stopping = self._shutdown
            self._export_queued(whole=False)
            if stopping:
                return

    def _export_queued(self, whole: bool) -> None:
        """Export a batch (or, `whole`, everything queued now), in this thread."""
        with self._export_lock:
            while True:
                with self._cond:
                    batch = [
                        self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))
                    ]
                if not batch:
                    return
                self._export(batch)
                if not whole and len(self._queue) < self._max_batch:
                    return

    def _export(self, batch: Sequence[ReadableSpan]) -> None:
        token = otel_context.attach(otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            result = self.exporter.export(batch)
        except Exception:
            logger.exception("tracegate: exporting %d spans failed", len(batch))
            result = SpanExportResult.FAILURE
        finally:
            otel_context.detach(token)
        if result is not SpanExportResult.SUCCESS:
            self._counters.add(
                "spans_dropped", len(batch), exporter=self._names[0], reason="export_failed"
            )

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Export what is queued, from this thread. Like the SDK's, it blocks until the
        exporter returns (callers bound it: `otel.provider.flush`)."""
        if self._shutdown:
            return False
        started = time.monotonic()
        self._export_queued(whole=True)
        left_ms = max(0.0, timeout_millis - (time.monotonic() - started) * 1000)
        return self.exporter.force_flush(int(left_ms))

    def shutdown(self) -> None:
        if self._shutdown:
            return
        self._export_queued(whole=True)
        self._shutdown = True
        with self._cond:
            self._cond.notify_all()
        self.exporter.shutdown()
