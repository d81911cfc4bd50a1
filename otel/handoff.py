"""Hand finished spans from a short-lived process to a long-lived one.

A forked RQ work horse ends with `os._exit`, so whatever its span processors buffer is
lost unless it is exported before — an HTTP round trip to the collector (and one to
Sentry for the transaction) on every job's critical path. Instead, `HandoffProcessor`
keeps a work horse's finished spans in memory; the horse writes them to Redis in one
RPUSH as it ends (`dump`), and the long-lived worker process reads them back (`load`)
and feeds them to its own processors, which export in the background and build the
Sentry transactions. Outside a work horse the processor simply delegates.

Spans cross as JSON (ids, attributes, events, links, status, times, resource, scope):
whoever can write to Redis can at most forge telemetry, never run code, unlike with
a pickle.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from otel.counters import Counters
from otel.propagation import SpecTraceState
from otel.semconv import attribute_dict

__all__ = ["HandoffProcessor"]

logger = logging.getLogger(__name__)
_MAX_BUFFERED = 10_000
# Spans started while set are announced to the processors only when they come back
# from a work horse (`feed` replays their start), never where they started.
_LATER: ContextVar[bool] = ContextVar("tracegate_handoff_announced_later", default=False)


class HandoffProcessor(SpanProcessor):
    """Delegates to `processors`; in a work horse, buffers finished spans instead."""

    def __init__(
        self, processors: Sequence[SpanProcessor], counters: Counters | None = None
    ) -> None:
        self.processors = list(processors)
        self._buffer: list[ReadableSpan] | None = None
        self._lock = threading.Lock()
        self._counters = counters
        self.dropped = 0

    # -- the work horse's side ---------------------------------------------------

    @contextmanager
    def announced_later(self) -> Iterator[None]:
        """Spans started in this block, in this context, skip `on_start` here: the
        worker starts a span that its forked work horse ends and hands back."""
        token = _LATER.set(True)
        try:
            yield
        finally:
            _LATER.reset(token)

    def start_buffering(self) -> None:
        with self._lock:
            self._buffer = []

    def take(self) -> list[ReadableSpan]:
        """Stop buffering and return what was buffered."""
        with self._lock:
            spans, self._buffer = self._buffer or [], None
        return spans

    def dump(self) -> bytes | None:
        spans = self.take()
        return self.encode(spans) if spans else None

    @staticmethod
    def encode(spans: Sequence[ReadableSpan]) -> bytes:
        """Finished spans as JSON, for `load` in another process."""
        return "".join(_encode([_to_value(span) for span in spans], 0)).encode()

    def release(self) -> int:
        """Stop buffering and feed what was buffered to the processors here (a work
        horse whose worker is gone exports its own spans)."""
        return self.feed(self.take())

    # -- the long-lived process's side ---------------------------------------------

    def load(self, payload: bytes) -> int:
        """Feed spans a work horse dumped to the processors, as if they ran here."""
        return self.feed([_from_value(value) for value in json.loads(payload)])

    def feed(self, spans: Sequence[ReadableSpan]) -> int:
        """Hand finished spans to the processors, as if they had ended here."""
        # Starts in start order, so parents are known before their children.
        for span in sorted(spans, key=lambda s: s.start_time or 0):
            for processor in self.processors:
                processor.on_start(span, None)  # type: ignore[arg-type]
        for span in sorted(spans, key=lambda s: s.end_time or 0):
            for processor in self.processors:
                processor.on_end(span)
        return len(spans)

    # -- SpanProcessor -------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if self._buffer is not None or _LATER.get():
            return
        for processor in self.processors:
            processor.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        with self._lock:
            buffer = self._buffer
            if buffer is not None:
                if len(buffer) < _MAX_BUFFERED:
                    buffer.append(span)
                else:
                    self.dropped += 1
                    if self._counters is not None:
                        self._counters.add(
                            "spans_dropped", exporter="handoff", reason="buffer_full"
                        )
                return
        for processor in self.processors:
            processor.on_end(span)

    def shutdown(self) -> None:
        for processor in self.processors:
            processor.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return all(p.force_flush(timeout_millis) for p in self.processors)


# The C JSON encoder, called directly (`json.dumps` costs several times as much on a
# span): values JSON does not know become their `str`, as with `default=str`.
_c_encoder = getattr(json.encoder, "c_make_encoder", None)
if _c_encoder is not None:
    _encode: Any = _c_encoder(
        None, str, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True
    )
else:  # not CPython

    def _encode(value: Any, _level: int) -> list[str]:
        return [json.dumps(value, default=str)]


# A process has one resource or few: the last one and its attributes, copied once (one
# tuple, replaced whole, so two threads never see one's resource with the other's copy).
_last_resource: list[tuple[Any, dict[str, Any]]] = [(None, {})]


def _resource_value(resource: Resource) -> dict[str, Any]:
    last = _last_resource[0]
    if last[0] is not resource:
        last = (resource, dict(resource.attributes))
        _last_resource[0] = last
    return last[1]


def _context_value(context: SpanContext | None) -> tuple[Any, ...] | None:
    if context is None:
        return None
    return (
        context.trace_id,
        context.span_id,
        context.is_remote,
        int(context.trace_flags),
        tuple(context.trace_state.items()),
    )


def _context(value: Sequence[Any] | None) -> SpanContext | None:
    if value is None:
        return None
    trace_id, span_id, is_remote, flags, state = value
    members = [(str(k), str(v)) for k, v in state]
    return SpanContext(
        int(trace_id),
        int(span_id),
        bool(is_remote),
        TraceFlags(int(flags)),
        SpecTraceState(members),
    )


def _attributes(values: dict[str, Any]) -> dict[str, Any]:
    # JSON turns tuples into lists; OpenTelemetry keeps sequences as tuples.
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _to_value(span: ReadableSpan) -> dict[str, Any]:
    scope = span.instrumentation_scope
    return {
        "name": span.name,
        "context": _context_value(span.get_span_context()),
        "parent": _context_value(span.parent),
        "resource": _resource_value(span.resource),
        "attributes": attribute_dict(span),
        "events": [(e.name, dict(e.attributes or {}), e.timestamp) for e in span.events],
        "links": [
            (_context_value(link.context), dict(link.attributes or {})) for link in span.links
        ],
        "kind": span.kind.value,
        "status": (span.status.status_code.value, span.status.description),
        "start": span.start_time,
        "end": span.end_time,
        "scope": (scope.name, scope.version, scope.schema_url) if scope else None,
    }


def _from_value(value: dict[str, Any]) -> ReadableSpan:
    code, description = value["status"]
    scope = value["scope"]
    return ReadableSpan(
        name=value["name"],
        context=_context(value["context"]),
        parent=_context(value["parent"]),
        resource=Resource(value["resource"]),
        attributes=_attributes(value["attributes"]),
        events=[
            Event(name, attributes, timestamp) for name, attributes, timestamp in value["events"]
        ],
        links=[Link(_context(ctx), attributes) for ctx, attributes in value["links"]],  # type: ignore[arg-type]
        kind=SpanKind(value["kind"]),
        status=Status(StatusCode(code), description),
        start_time=value["start"],
        end_time=value["end"],
        instrumentation_scope=InstrumentationScope(*scope) if scope else None,
    )
