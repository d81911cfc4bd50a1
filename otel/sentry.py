"""The Sentry bridge: OpenTelemetry is the tracer, Sentry is told what it decided.

- `init_sentry` starts sentry-sdk with its own tracing off (no `traces_sample_rate`):
  OpenTelemetry's sampler makes the one decision. sentry-sdk's auto-enabled
  integrations stay (Flask request data on events), except `RqIntegration`, whose job
  meta and failure events would duplicate tracegate's RQ wrapper and carry a second,
  random trace id.
- `SentryBridge` is a span processor. A span that starts a local trace segment (no
  local parent) pins its trace context for the unit of work, so an error captured after
  the span ended still links. Sampled segments are sent to Sentry as transactions with
  their child spans, straight from the finished spans, in bounded buffers. A span that
  ends in error with a recorded exception Sentry never saw becomes a Sentry error.
- Its event processor (`TracegateIntegration`) gives every Sentry event the active
  span's `contexts.trace` (recording or not), the dynamic sampling context that goes
  into the envelope's `trace` header, and a `trace_id` tag; it records the event id on
  the span.
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import sentry_sdk
from opentelemetry import baggage as otel_baggage
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanContext, StatusCode
from sentry_sdk.integrations import Integration
from sentry_sdk.integrations.logging import ignore_logger
from sentry_sdk.scope import add_global_event_processor

from otel import ids
from otel.config import TelemetryConfig
from otel.counters import Counters
from otel.propagation import TracegatePropagator
from otel.semconv import sentry_op, sentry_status, span_description
from otel.transport import EventSink, count_losses, sentry_transport

__all__ = [
    "Pin",
    "SentryBridge",
    "TracegateIntegration",
    "current_pin",
    "init_sentry",
    "open_unit",
    "pin",
    "unpin",
]

logger = logging.getLogger(__name__)
_ORIGIN = "auto.otel.tracegate"
_EVENT_ID_ATTRIBUTE = "sentry.event_id"
_SKIPPED_ATTRIBUTE = "sentry.error_skipped"


@dataclass(frozen=True)
class Pin:
    """The trace context of the unit of work (request, job) that is running."""

    trace_id: int
    span_id: int
    parent_span_id: int | None
    sampled: bool


class _Unit:
    """The unit of work (request, job) running in this context, and what it pinned."""

    __slots__ = ("pinned",)

    def __init__(self) -> None:
        self.pinned: Pin | None = None


# Outside a unit nothing is pinned: a pin that outlived its request would link later,
# unrelated errors of the thread to an old trace.
_unit: contextvars.ContextVar[_Unit | None] = contextvars.ContextVar("tracegate_unit", default=None)

UnitToken = contextvars.Token["_Unit | None"]


def open_unit() -> UnitToken:
    """Start a unit of work (request, job); end it with `unpin(token)`."""
    return _unit.set(_Unit())


def pin(span_context: SpanContext, parent_span_id: int | None) -> None:
    """Pin a segment's trace context for the rest of the current unit, if there is one."""
    unit = _unit.get()
    if unit is not None:
        unit.pinned = Pin(
            span_context.trace_id,
            span_context.span_id,
            parent_span_id,
            span_context.trace_flags.sampled,
        )


def unpin(token: UnitToken | None) -> None:
    """End the unit that `open_unit` started."""
    if token is None:
        return
    try:
        _unit.reset(token)
    except ValueError:  # reset from another context: end whatever unit is current
        _unit.set(None)


def _pinned() -> Pin | None:
    unit = _unit.get()
    return unit.pinned if unit is not None else None


def current_pin() -> Pin | None:
    """The active span's trace context, else the pinned segment's."""
    span = trace.get_current_span()
    span_context = span.get_span_context()
    if span_context.is_valid:
        parent: int | None = None
        if isinstance(span, ReadableSpan) and span.parent is not None:
            parent = span.parent.span_id
        else:
            pinned = _pinned()
            if pinned is not None and pinned.span_id == span_context.span_id:
                parent = pinned.parent_span_id
        return Pin(
            span_context.trace_id, span_context.span_id, parent, span_context.trace_flags.sampled
        )
    return _pinned()


@dataclass
class _Segment:
    started: float
    spans: list[ReadableSpan] = field(default_factory=list)
    open_ids: set[int] = field(default_factory=set)
    dropped: int = 0


class SentryBridge(SpanProcessor):
    """Mirrors OpenTelemetry spans into Sentry (see the module docstring)."""

    def __init__(self, config: TelemetryConfig, propagator: TracegatePropagator) -> None:
        self.config = config
        self.propagator = propagator
        self.failures = 0  # telemetry errors swallowed, for operators
        self.dropped_spans = 0
        self.events_seen = 0  # lets a work horse skip flushing when it sent nothing
        self._reset()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._segments: OrderedDict[int, _Segment] = OrderedDict()
        self._segment_of: dict[int, int] = {}

    # -- span processor -------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            span_context = span.get_span_context()
            if span_context is None:
                return
            parent = span.parent
            with self._lock:
                root = (
                    None
                    if parent is None or parent.is_remote
                    else self._segment_of.get(parent.span_id)
                )
                if root is None:
                    # A new local segment: a server or consumer span, or any local root.
                    pin(span_context, parent.span_id if parent is not None else None)
                    if span_context.trace_flags.sampled:
                        self._open_segment(span_context.span_id)
                    return
                segment = self._segments.get(root)
                if segment is not None:
                    self._segment_of[span_context.span_id] = root
                    segment.open_ids.add(span_context.span_id)
        except Exception:
            self._failed("on_start")

    def _open_segment(self, span_id: int) -> None:
        now = time.monotonic()
        while self._segments:
            oldest_id, oldest = next(iter(self._segments.items()))
            too_many = len(self._segments) >= self.config.max_open_segments
            if not too_many and now - oldest.started <= self.config.max_segment_age_s:
                break
            self._evict(oldest_id)
        self._segments[span_id] = _Segment(started=now, open_ids={span_id})
        self._segment_of[span_id] = span_id

    def _evict(self, root_id: int) -> None:
        segment = self._segments.pop(root_id)
        for span_id in segment.open_ids:
            self._segment_of.pop(span_id, None)
        self.dropped_spans += len(segment.spans) + len(segment.open_ids)

    def on_end(self, span: ReadableSpan) -> None:
        try:
            span_context = span.get_span_context()
            if span_context is None:
                return
            span_id = span_context.span_id
            finished: _Segment | None = None
            with self._lock:
                root = self._segment_of.pop(span_id, None)
                segment = self._segments.get(root) if root is not None else None
                if segment is not None:
                    segment.open_ids.discard(span_id)
                    if span_id == root:
                        finished = self._segments.pop(span_id)
                        for child_id in finished.open_ids:
                            self._segment_of.pop(child_id, None)
                    elif len(segment.spans) < self.config.max_spans_per_segment:
                        segment.spans.append(span)
                    else:
                        segment.dropped += 1
                        self.dropped_spans += 1
            self._capture_span_error(span)
            if finished is not None:
                sentry_sdk.capture_event(self._transaction(span, finished))  # type: ignore[arg-type]
        except Exception:
            self._failed("on_end")

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        client = sentry_sdk.get_client()
        if client.is_active():
            client.flush(timeout=timeout_millis / 1000.0)
        return True

    # -- events ---------------------------------------------------------------

    def on_event(self, event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
        self.events_seen += 1
        try:
            if event.get("type") == "transaction":
                return event
            if ((event.get("contexts") or {}).get("trace") or {}).get("origin") == _ORIGIN:
                return event  # built by the bridge from a span: its trace context is exact
            current = current_pin()
            if current is None:
                return event
            contexts = event.setdefault("contexts", {})
            contexts["trace"] = self._trace_context(current)
            event.setdefault("tags", {})["trace_id"] = self._spell(current.trace_id)
            event_id = event.get("event_id")
            span = trace.get_current_span()
            if event_id and span.is_recording():
                span.set_attribute(_EVENT_ID_ATTRIBUTE, event_id)
        except Exception:
            self._failed("event processor")
        return event

    @staticmethod
    def mark_reported(span: trace.Span, reason: str) -> None:
        """The span's error is handled by its integration: no fallback event for it.

        Kept on the span itself (not in this process's memory), so the decision holds
        when the span is handed to another process to be mirrored.
        """
        span.set_attribute(_SKIPPED_ATTRIBUTE, reason)

    def _trace_context(self, current: Pin, **extra: Any) -> dict[str, Any]:
        context: dict[str, Any] = {
            "trace_id": ids.trace_id_hex(current.trace_id),
            "span_id": ids.span_id_hex(current.span_id),
        }
        if current.parent_span_id:
            context["parent_span_id"] = ids.span_id_hex(current.parent_span_id)
        context.update(extra)
        context["dynamic_sampling_context"] = self._dsc(current.trace_id, current.sampled)
        return context

    def _dsc(self, trace_id: int, sampled: bool) -> dict[str, str]:
        inbound = {
            key.removeprefix("sentry-"): value
            for key, value in otel_baggage.get_all().items()
            if key.startswith("sentry-") and isinstance(value, str)
        }
        return self.propagator.dsc_for(trace_id, sampled, inbound)

    def _spell(self, trace_id: int) -> str:
        if self.config.trace_id_format == "hex":
            return ids.trace_id_hex(trace_id)
        return ids.trace_id_uuid(trace_id)

    # -- building Sentry payloads from spans ------------------------------------

    def _transaction(self, root: ReadableSpan, segment: _Segment) -> dict[str, Any]:
        root_context = root.get_span_context()
        assert root_context is not None
        attributes = dict(root.attributes or {})
        current = Pin(
            root_context.trace_id,
            root_context.span_id,
            root.parent.span_id if root.parent else None,
            True,
        )
        trace_context = self._trace_context(
            current,
            op=sentry_op(root.kind, attributes),
            status=sentry_status(root.status.status_code, attributes),
            origin=_ORIGIN,
            data=attributes,
        )
        event: dict[str, Any] = {
            "type": "transaction",
            "platform": "python",
            "transaction": root.name,
            "transaction_info": {"source": "route" if "http.route" in attributes else "custom"},
            "start_timestamp": _seconds(root.start_time),
            "timestamp": _seconds(root.end_time),
            "contexts": {
                "trace": trace_context,
                "otel": {
                    "attributes": attributes,
                    "resource": dict(root.resource.attributes) if root.resource else {},
                },
            },
            "spans": [self._child(span) for span in segment.spans],
            "tags": {"trace_id": self._spell(root_context.trace_id)},
        }
        if segment.dropped:
            event["tags"]["tracegate.dropped_spans"] = str(segment.dropped)
        return event

    @staticmethod
    def _child(span: ReadableSpan) -> dict[str, Any]:
        span_context = span.get_span_context()
        assert span_context is not None
        attributes = dict(span.attributes or {})
        child: dict[str, Any] = {
            "trace_id": ids.trace_id_hex(span_context.trace_id),
            "span_id": ids.span_id_hex(span_context.span_id),
            "op": sentry_op(span.kind, attributes),
            "description": span_description(span.name, attributes),
            "status": sentry_status(span.status.status_code, attributes),
            "start_timestamp": _seconds(span.start_time),
            "timestamp": _seconds(span.end_time),
            "origin": _ORIGIN,
            "data": attributes,
        }
        if span.parent is not None:
            child["parent_span_id"] = ids.span_id_hex(span.parent.span_id)
        return child

    def _capture_span_error(self, span: ReadableSpan) -> None:
        """An exception recorded on a span in error that no Sentry event reported.

        Only for the span that starts a local segment: an exception recorded on a child
        either reaches the root (and is reported there, once) or was handled.
        """
        if span.status.status_code is not StatusCode.ERROR:
            return
        if span.parent is not None and not span.parent.is_remote:
            return
        attributes_seen = span.attributes or {}
        if _EVENT_ID_ATTRIBUTE in attributes_seen or _SKIPPED_ATTRIBUTE in attributes_seen:
            return
        recorded = next((e for e in span.events if e.name == "exception"), None)
        if recorded is None:
            return
        attributes = recorded.attributes or {}
        span_context = span.get_span_context()
        assert span_context is not None
        current = Pin(
            span_context.trace_id,
            span_context.span_id,
            span.parent.span_id if span.parent else None,
            span_context.trace_flags.sampled,
        )
        event = {
            "level": "error",
            "exception": {
                "values": [
                    {
                        "type": str(attributes.get("exception.type", "Exception")),
                        "value": str(attributes.get("exception.message", "")),
                        "mechanism": {"type": "otel.span", "handled": False},
                    }
                ]
            },
            "extra": {"otel.stacktrace": str(attributes.get("exception.stacktrace", ""))},
            "contexts": {"trace": self._trace_context(current, origin=_ORIGIN)},
            "tags": {"trace_id": self._spell(span_context.trace_id), "otel.span": span.name},
        }
        sentry_sdk.capture_event(event)  # type: ignore[arg-type]

    def _failed(self, where: str) -> None:
        self.failures += 1
        logger.exception("tracegate: Sentry bridge failed in %s", where)


def _seconds(ns: int | None) -> float:
    return (ns or time.time_ns()) / 1e9


class TracegateIntegration(Integration):
    """Registers the bridge's event processor with sentry-sdk (once per process)."""

    identifier = "tracegate"

    def __init__(self, bridge: SentryBridge) -> None:
        self.bridge = bridge

    @staticmethod
    def setup_once() -> None:
        add_global_event_processor(_process_event)  # type: ignore[arg-type]


def _process_event(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any]:
    integration = sentry_sdk.get_client().get_integration(TracegateIntegration)
    if integration is None:
        return event
    return integration.bridge.on_event(event, hint)


def _external_context() -> tuple[str, str] | None:
    current = current_pin()
    if current is None:
        return None
    return ids.trace_id_hex(current.trace_id), ids.span_id_hex(current.span_id)


def init_sentry(
    config: TelemetryConfig,
    bridge: SentryBridge,
    event_sink: EventSink | None = None,
    counters: Counters | None = None,
) -> bool:
    """Start sentry-sdk with the bridge.

    Off (False) without a DSN, Spotlight or event sink. With a sink, every error and
    message event also reaches it, DSN or not.
    """
    if not config.sentry_dsn and not config.sentry_spotlight and event_sink is None:
        return False
    from sentry_sdk.integrations.rq import RqIntegration

    extra: dict[str, Any] = {}
    if event_sink is not None:
        extra["transport"] = sentry_transport(event_sink, config.sentry_dsn)
    sentry_sdk.init(
        dsn=config.sentry_dsn or None,
        environment=config.sentry_environment,
        release=config.sentry_release or None,
        spotlight=config.sentry_spotlight or None,
        debug=config.sentry_debug,
        # Sentry's own tracing stays off: OpenTelemetry's sampler decides, once.
        traces_sample_rate=None,
        # No request bodies in events; cookies and credentials stay out as long as
        # sentry-sdk's send_default_pii keeps its default (off).
        max_request_body_size="never",
        integrations=[TracegateIntegration(bridge)],
        disabled_integrations=[RqIntegration()],
        **extra,
    )
    _undo_spotlight_defaults(sentry_sdk.get_client())
    # Telemetry's own troubles (a collector that is down, a failed export) belong in the
    # logs, not in Sentry as events of the application: that way lies a feedback loop.
    for name in ("opentelemetry.*", "otel", "otel.*"):
        ignore_logger(name)
    if counters is not None:
        count_losses(sentry_sdk.get_client().transport, counters)
    # Logs, check-ins and metrics that sentry-sdk sends outside events use OTel's ids too.
    try:
        from sentry_sdk.scope import register_external_propagation_context

        register_external_propagation_context(_external_context)
    except ImportError:  # older sentry-sdk: events are still linked by the processor
        pass
    return True


def _undo_spotlight_defaults(client: Any) -> None:
    """sentry-sdk turns on its own tracing, full sampling and PII for a Spotlight without
    a DSN (a local debugging aid); here OpenTelemetry's sampler still decides alone and
    PII stays out, so Spotlight shows what Sentry would get."""
    options = client.options
    if getattr(client, "spotlight", None) is None or options.get("dsn"):
        return
    options.update(
        traces_sampler=None, profiles_sampler=None, error_sampler=None, send_default_pii=False
    )
    collection = options.get("data_collection")
    if isinstance(collection, dict) and not collection.get("provided_by_user"):
        try:  # re-derived from send_default_pii, as sentry-sdk does at init
            from sentry_sdk.data_collection import _map_from_send_default_pii

            options["data_collection"] = _map_from_send_default_pii(
                send_default_pii=False,
                include_local_variables=options.get("include_local_variables") is not False,
                include_source_context=options.get("include_source_context") is not False,
            )
        except (ImportError, TypeError):  # another sentry-sdk: its own derivation stands
            pass
