"""The Sentry bridge: OpenTelemetry is the tracer, Sentry is told what it decided.

- `init_sentry` starts sentry-sdk with its own tracing off (no `traces_sample_rate`):
  OpenTelemetry's sampler makes the one decision. sentry-sdk's auto-enabled
  integrations stay (Flask request data on events, log breadcrumbs and error events,
  without the Sentry Logs handler tracegate never turns on), except `RqIntegration`,
  whose job meta and failure events would duplicate tracegate's RQ wrapper and carry a
  second, random trace id.
- `SentryBridge` is a span processor. A span that starts a local trace segment (no
  local parent) pins its trace context for the unit of work, so an error captured after
  the span ended still links. Sampled segments are sent to Sentry as transactions with
  their child spans, straight from the finished spans, in bounded buffers. A span that
  ends in error with a recorded exception Sentry never saw becomes a Sentry error.
  With `TRACEGATE_SENTRY_TRACES=otlp` (and a DSN) no transaction is built: the spans
  reach Sentry through an OTLP exporter (`otel.provider`); errors are linked all the
  same.
- The transaction envelope is built here, not by `sentry_sdk.capture_event`, whose
  generic serialiser cost most of a transaction: the same scopes, event processors and
  scrubbing apply, the child spans are written by `otel.semconv.span_json`, and the
  event is encoded once. `CompactHttpTransport` gzips envelopes for a sixth of the
  cost of sentry-sdk's level-9 gzip.
- Its event processor (`TracegateIntegration`) gives every Sentry event the active
  span's `contexts.trace` (recording or not), the dynamic sampling context that goes
  into the envelope's `trace` header, and a `trace_id` tag; it records the event id on
  the span.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import random
import threading
import time
from collections import OrderedDict
from copy import copy
from dataclasses import dataclass
from typing import Any

import sentry_sdk
from opentelemetry import baggage as otel_baggage
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import SpanContext, StatusCode
from sentry_sdk.envelope import Envelope
from sentry_sdk.integrations import Integration
from sentry_sdk.integrations.logging import ignore_logger
from sentry_sdk.scope import add_global_event_processor
from sentry_sdk.scrubber import EventScrubber
from sentry_sdk.utils import AnnotatedValue
from sentry_sdk.utils import logger as sentry_logger

from otel import ids
from otel.config import TelemetryConfig
from otel.counters import Counters
from otel.forks import at_fork, keep_inherited
from otel.propagation import TracegatePropagator
from otel.semconv import ORIGIN, attribute_dict, finite, json_encoder, sentry_fields, span_json
from otel.transport import (
    CompactHttpTransport,
    EventSink,
    ReadyItem,
    count_losses,
    http_transport,
    sentry_transport,
)

__all__ = [
    "CompactHttpTransport",
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


class _Segment:
    """A sampled local segment being collected: its root and its finished children."""

    __slots__ = ("closed", "dropped", "evicted", "root_id", "spans", "started")

    def __init__(self, root_id: int, started: float) -> None:
        self.root_id = root_id
        self.started = started
        self.spans: list[ReadableSpan] = []
        self.dropped = 0
        self.closed = False  # its root ended, or it was evicted
        self.evicted = False


class SentryBridge(SpanProcessor):
    """Mirrors OpenTelemetry spans into Sentry (see the module docstring)."""

    def __init__(self, config: TelemetryConfig, propagator: TracegatePropagator) -> None:
        self.config = config
        self.propagator = propagator
        # Segments are collected for a DSN or Spotlight to receive as transactions. With
        # TRACEGATE_SENTRY_TRACES=otlp and a DSN spans reach Sentry through an OTLP
        # exporter (see `otel.provider`); with neither DSN nor Spotlight (the local
        # store's sink takes error and message events only) nobody would receive one.
        # Errors are linked either way.
        self.transactions = (
            bool(config.sentry_dsn or config.sentry_spotlight) and not config.sentry_otlp_enabled
        )
        self.failures = 0  # telemetry errors swallowed, for operators
        self.dropped_spans = 0
        self.events_seen = 0  # lets a work horse skip flushing when it sent nothing
        self._envelopes = _EnvelopeBuilder()
        self._reset()
        at_fork(self, after_in_child="_reset")

    def _reset(self) -> None:
        # In a forked child the parent's open segments are the parent's: left unfreed.
        keep_inherited(getattr(self, "_segments", None))
        keep_inherited(getattr(self, "_segment_of", None))
        self._lock = threading.Lock()
        self._segments: OrderedDict[int, _Segment] = OrderedDict()
        # Every open span of a collected segment -> that segment. A child's entry goes
        # when it ends; entries of children that never end, once their segment is
        # closed, are swept when the map has doubled.
        self._segment_of: dict[int, _Segment] = {}
        self._sweep_at = 4 * self.config.max_open_segments

    # -- span processor -------------------------------------------------------
    #
    # on_start and on_end run on the application's thread for every span. For a child
    # they do a dict lookup and a store or an append, without a lock (each is atomic);
    # the lock guards opening, finishing and evicting segments. The transaction is
    # built once, when the segment's root ends.

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            span_context = span.context
            if span_context is None:
                return
            parent = span.parent
            if parent is not None and not parent.is_remote:
                if not self.transactions:
                    return  # a local child: nothing to collect, nothing to pin
                segment = self._segment_of.get(parent.span_id)
                if segment is not None:
                    if not segment.closed:
                        self._segment_of[span_context.span_id] = segment
                    return
                # A local parent not collected here (evicted, another provider's): the
                # span heads a segment of its own.
            # A new local segment: a server or consumer span, or any local root.
            pin(span_context, parent.span_id if parent is not None else None)
            if self.transactions and span_context.trace_flags.sampled:
                self._open_segment(span_context.span_id)
        except Exception:
            self._failed("on_start")

    def _open_segment(self, span_id: int) -> None:
        now = time.monotonic()
        with self._lock:
            segments = self._segments
            while segments:
                oldest_id, oldest = next(iter(segments.items()))
                too_many = len(segments) >= self.config.max_open_segments
                if not too_many and now - oldest.started <= self.config.max_segment_age_s:
                    break
                del segments[oldest_id]
                oldest.closed = oldest.evicted = True
                self.dropped_spans += len(oldest.spans) + 1
            segment = _Segment(span_id, now)
            segments[span_id] = segment
            self._segment_of[span_id] = segment
            if len(self._segment_of) > self._sweep_at:
                for key, entry in list(self._segment_of.items()):  # a copy: others add
                    if entry.closed:
                        self._segment_of.pop(key, None)
                self._sweep_at = max(4 * self.config.max_open_segments, 2 * len(self._segment_of))

    def on_end(self, span: ReadableSpan) -> None:
        try:
            span_context = span.context
            if span_context is None:
                return
            span_id = span_context.span_id
            segment = self._segment_of.pop(span_id, None) if self._segment_of else None
            if segment is not None:
                if span_id == segment.root_id:
                    with self._lock:
                        finished = self._segments.pop(span_id, None) is not None
                        segment.closed = True
                    if finished:
                        self._send_transaction(span, segment)
                elif segment.closed:
                    if segment.evicted:
                        self.dropped_spans += 1
                elif len(segment.spans) < self.config.max_spans_per_segment:
                    segment.spans.append(span)
                else:
                    segment.dropped += 1
                    self.dropped_spans += 1
            if span.status.status_code is StatusCode.ERROR:
                self._capture_span_error(span)
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
            if ((event.get("contexts") or {}).get("trace") or {}).get("origin") == ORIGIN:
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

    # -- transactions ---------------------------------------------------------------

    def _send_transaction(self, root: ReadableSpan, segment: _Segment) -> None:
        """The segment as a Sentry transaction, handed to sentry-sdk's transport.

        Built and serialised here, not by `sentry_sdk.capture_event`: its generic
        serialiser walks every value of the event in Python, most of what a
        transaction cost (see `bench/spans.py`). The scope's data, the event
        processors and the scrubber still apply (`_EnvelopeBuilder`).
        """
        client = sentry_sdk.get_client()
        if not client.is_active():
            return
        if client.spotlight is None and _queue_full(client.transport):
            # sentry-sdk would drop it at the door: neither build nor serialise it (under
            # overload that was most of the bridge's cost), but count it as sentry-sdk
            # does, for /metrics and for Sentry's client reports.
            transport = client.transport
            assert transport is not None
            transport.record_lost_event("queue_overflow", data_category="transaction")
            transport.record_lost_event(
                "queue_overflow", data_category="span", quantity=len(segment.spans) + 1
            )
            return
        self.events_seen += 1
        deny = self._envelopes.span_denylist(client)
        root_context = root.context
        assert root_context is not None
        trace_hex = f"{root_context.trace_id:032x}"
        spans: list[str] = []
        filtered: dict[str, Any] = {}
        for index, span in enumerate(segment.spans):
            text, keys = span_json(span, trace_hex, deny)
            spans.append(text)
            if keys:  # what sentry-sdk's scrubber records in `_meta`
                filtered[str(index)] = {"data": {key: {"": _FILTERED_META} for key in keys}}
        event = self._transaction(root, segment, trace_hex)
        dsc = self._dsc(root_context.trace_id, True)
        envelope = self._envelopes.transaction(client, event, spans, dsc, filtered)
        if envelope is None:  # a hook or an option only sentry-sdk knows how to apply
            event["spans"] = [json.loads(text) for text in spans]
            event["contexts"]["trace"]["dynamic_sampling_context"] = dsc
            sentry_sdk.capture_event(event)  # type: ignore[arg-type]
            return
        if client.spotlight is not None:
            client.spotlight.capture_envelope(envelope)
        if client.transport is not None:
            client.transport.capture_envelope(envelope)

    def _transaction(self, root: ReadableSpan, segment: _Segment, trace_hex: str) -> dict[str, Any]:
        """The transaction event of a segment, without its child spans."""
        root_context = root.context
        assert root_context is not None
        attributes = dict(attribute_dict(root))  # a copy: event processors see it
        op, _, status = sentry_fields(root.kind, root.name, root.status.status_code, attributes)
        trace_context: dict[str, Any] = {
            "trace_id": trace_hex,
            "span_id": f"{root_context.span_id:016x}",
            "op": op,
            "status": status,
            "origin": ORIGIN,
            "data": attributes,
        }
        if root.parent is not None:
            trace_context["parent_span_id"] = f"{root.parent.span_id:016x}"
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
                    "resource": self._envelopes.resource(root.resource),
                },
            },
            "tags": {"trace_id": self._spell(root_context.trace_id)},
        }
        if segment.dropped:
            event["tags"]["tracegate.dropped_spans"] = str(segment.dropped)
        return event

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
            "contexts": {"trace": self._trace_context(current, origin=ORIGIN)},
            "tags": {"trace_id": self._spell(span_context.trace_id), "otel.span": span.name},
        }
        sentry_sdk.capture_event(event)  # type: ignore[arg-type]

    def _failed(self, where: str) -> None:
        self.failures += 1
        logger.exception("tracegate: Sentry bridge failed in %s", where)


def _seconds(ns: int | None) -> float:
    return (ns or time.time_ns()) / 1e9


class _EnvelopeBuilder:
    """Makes a transaction's envelope as `sentry_sdk.capture_event` would, for a
    fraction of its cost; keeps what is per client and per resource."""

    def __init__(self) -> None:
        self._client: Any = None
        self._sdk = ""
        self._encode = json_encoder()
        self._scrubber: Any = None
        self._deny: frozenset[str] = frozenset()
        self._resource: Resource | None = None
        self._resource_attributes: dict[str, Any] = {}

    def resource(self, resource: Resource | None) -> dict[str, Any]:
        if resource is None:
            return {}
        if resource is not self._resource:
            self._resource_attributes = dict(resource.attributes)
            self._resource = resource
        return self._resource_attributes

    def span_denylist(self, client: Any) -> frozenset[str]:
        """The lower-cased keys sentry-sdk's scrubber filters out of span data."""
        scrubber = client.options.get("event_scrubber")
        if scrubber is not self._scrubber:
            denylist = getattr(scrubber, "denylist", None) or ()
            self._deny = frozenset(str(key).lower() for key in denylist)
            self._scrubber = scrubber
        return self._deny

    def transaction(
        self,
        client: Any,
        event: dict[str, Any],
        spans: list[str],
        dsc: dict[str, str],
        spans_meta: dict[str, Any] | None = None,
    ) -> Envelope | None:
        """The envelope of a transaction whose child spans are already JSON (`spans`);
        None when only sentry-sdk itself can make it.

        What `capture_event` does to a transaction, in its order: the merged scopes
        (global, isolation, current) apply their data and run the event processors;
        release, environment, server name, dist, SDK and platform are filled in; the
        scrubber runs (on span data it ran in `span_json`); annotated values (a
        filtered header) become plain values and Sentry's `_meta`. Then one JSON text.
        """
        options = client.options
        scrubber: Any = options.get("event_scrubber")
        if (
            options.get("before_send_transaction") is not None
            or options.get("max_value_length") is not None
            or (scrubber is not None and type(scrubber) is not EventScrubber)
        ):
            return None
        event["event_id"] = event_id = f"{random.getrandbits(128):032x}"
        hint: dict[str, Any] = {}
        scope = copy(sentry_sdk.get_global_scope())
        scope.update_from_scope(sentry_sdk.get_isolation_scope())
        scope.update_from_scope(sentry_sdk.get_current_scope())
        processed = scope.apply_to_event(event, hint, options)  # type: ignore[arg-type]
        if processed is None:
            transport = client.transport
            if transport is not None:
                transport.record_lost_event("event_processor", data_category="transaction")
                transport.record_lost_event(
                    "event_processor", data_category="span", quantity=len(spans) + 1
                )
            return None
        event = processed  # type: ignore[assignment]
        for key in ("release", "environment", "server_name", "dist"):
            if event.get(key) is None and options.get(key) is not None:
                event[key] = str(options[key]).strip()
        # The SDK's description is the same for every event: its JSON is kept.
        sdk = None if event.get("sdk") is not None else self._sdk_json(client)
        if scrubber is not None:
            scrubbed: Any = event
            scrubber.scrub_request(scrubbed)
            scrubber.scrub_extra(scrubbed)
            scrubber.scrub_user(scrubbed)
            scrubber.scrub_breadcrumbs(scrubbed)
            scrubber.scrub_frames(scrubbed)
        meta = _plain(event) or {}
        if spans_meta:
            meta["spans"] = spans_meta
        if meta:
            event["_meta"] = meta
        try:
            rest = self._encode(event)
        except ValueError:  # NaN or infinity in an attribute: Sentry wants them as text
            rest = self._encode(finite(event))
        # The child spans' JSON goes in front of the rest of the event's, the SDK's after.
        body = '{"spans":[' + ",".join(spans) + "]" + ("," + rest[1:-1] if rest != "{}" else "")
        body += "}" if sdk is None else ',"sdk":' + sdk + "}"
        headers: dict[str, Any] = {"event_id": event_id, "sent_at": _now_iso(), "trace": dsc}
        envelope = Envelope(headers=headers)
        # `json` (with the spans as text) is what sentry-sdk reads to count a lost item.
        envelope.add_item(ReadyItem(body.encode(), {**event, "spans": spans}, "transaction"))
        for attachment in hint.get("attachments") or ():
            envelope.add_item(attachment.to_envelope_item())
        return envelope

    def _sdk_json(self, client: Any) -> str:
        if client is not self._client:
            from sentry_sdk.client import SDK_INFO

            self._sdk = self._encode({**SDK_INFO, "integrations": sorted(client.integrations)})
            self._client = client
        return self._sdk


# sentry-sdk's `_meta` note on a value its scrubber replaced.
_FILTERED_META = AnnotatedValue.substituted_because_contains_sensitive_data().metadata
# The contexts the bridge builds itself: only JSON values in them.
_OWN_CONTEXTS = frozenset(("trace", "otel"))
_CONTAINERS = (dict, list, tuple, AnnotatedValue)


def _plain(event: dict[str, Any]) -> dict[str, Any] | None:
    """Replace sentry-sdk's annotated values (a filtered header, a removed body) by
    their values, in place; return the annotations as Sentry's `_meta` tree."""
    meta: dict[str, Any] = {}
    for key, value in event.items():
        if key == "contexts" and isinstance(value, dict):
            for name, context in value.items():
                if name not in _OWN_CONTEXTS and isinstance(context, _CONTAINERS):
                    plain, found = _unannotate(context)
                    value[name] = plain
                    if found:
                        meta.setdefault("contexts", {})[name] = found
        elif isinstance(value, _CONTAINERS):
            plain, found = _unannotate(value)
            event[key] = plain
            if found:
                meta[key] = found
    return meta or None


def _unannotate(value: Any) -> tuple[Any, dict[str, Any] | None]:
    """`value` without annotations (copied where it changes), and their `_meta`."""
    if isinstance(value, AnnotatedValue):
        plain, meta = _unannotate(value.value)
        meta = dict(meta or {})
        meta[""] = value.metadata
        return plain, meta
    metas: dict[str, Any] | None = None
    if isinstance(value, dict):
        changed: dict[Any, Any] | None = None
        for key, item in value.items():
            if isinstance(item, _CONTAINERS):
                plain, meta = _unannotate(item)
                if plain is not item:
                    changed = changed or {}
                    changed[key] = plain
                if meta:
                    metas = metas or {}
                    metas[str(key)] = meta
        return ({**value, **changed} if changed else value), metas
    if isinstance(value, (list, tuple)):
        items: list[Any] | None = None
        for index, item in enumerate(value):
            if isinstance(item, _CONTAINERS):
                plain, meta = _unannotate(item)
                if plain is not item:
                    items = items or list(value)
                    items[index] = plain
                if meta:
                    metas = metas or {}
                    metas[str(index)] = meta
        return (items if items is not None else value), metas
    return value, None


_second: list[Any] = [None, ""]


def _now_iso() -> str:
    """sentry-sdk's `sent_at` spelling (ISO 8601, microseconds, +00:00); the part up to
    the second is made once a second."""
    now = time.time()
    second = int(now)
    if second != _second[0]:
        stamp = datetime.datetime.fromtimestamp(second, datetime.timezone.utc)
        _second[:] = [second, stamp.strftime("%Y-%m-%dT%H:%M:%S")]
    return f"{_second[1]}.{int((now - second) * 1e6):06d}+00:00"


class TracegateIntegration(Integration):
    """Registers the bridge's event processor with sentry-sdk (once per process)."""

    identifier = "tracegate"

    def __init__(self, bridge: SentryBridge) -> None:
        self.bridge = bridge

    @staticmethod
    def setup_once() -> None:
        add_global_event_processor(_process_event)  # type: ignore[arg-type]


def _queue_full(transport: Any) -> bool:
    """Whether sentry-sdk's transport queue (of its HTTP transport, when wrapped) is full."""
    inner = getattr(transport, "_http", None) or transport
    full = getattr(getattr(inner, "_worker", None), "full", None)
    return bool(full()) if callable(full) else False


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


def _logging_integration() -> Integration:
    """sentry-sdk's logging integration without its Sentry Logs handler.

    Breadcrumbs and error events from log records stay. tracegate never turns Sentry
    Logs on (`enable_logs`), yet that handler took every record of the process — four
    per RQ job — through its ignore patterns and the client's options (~30 µs each)
    to drop it.
    """
    from sentry_sdk.integrations.logging import LoggingIntegration

    return LoggingIntegration(sentry_logs_level=None)


def _request_integrations() -> list[Integration]:
    """sentry-sdk's Flask integration without its per-request Sentry transaction.

    Its WSGI middleware continues the inbound trace and starts a transaction for every
    request — unsampled here, since Sentry's tracing is off, yet about 40 µs each.
    With no HTTP method to capture it does neither; the rest stays: an isolation scope
    per request, request data on events, request sessions, unhandled errors.
    """
    try:
        from sentry_sdk.integrations.flask import FlaskIntegration
    except Exception:  # Flask not installed: sentry-sdk does not enable it either
        return []
    return [FlaskIntegration(http_methods_to_capture=())]


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
    from sentry_sdk.integrations.redis import RedisIntegration
    from sentry_sdk.integrations.rq import RqIntegration

    extra: dict[str, Any] = {}
    if event_sink is not None:
        extra["transport"] = sentry_transport(event_sink, config.sentry_dsn, config.sentry_pipeline)
    elif config.sentry_dsn:
        extra["transport"] = http_transport(config.sentry_pipeline)
    sentry_sdk.init(
        dsn=config.sentry_dsn or None,
        environment=config.sentry_environment,
        release=config.sentry_release or None,
        spotlight=config.sentry_spotlight or None,
        debug=config.sentry_debug,
        # Sentry's own tracing stays off: OpenTelemetry's sampler decides, once.
        traces_sample_rate=None,
        # Its backpressure monitor only halves Sentry's own trace sampling, which is
        # off; each forked RQ work horse paid its at-fork hook (~0.1 ms).
        enable_backpressure_handling=False,
        # No request bodies in events; cookies and credentials stay out as long as
        # sentry-sdk's send_default_pii keeps its default (off).
        max_request_body_size="never",
        integrations=[
            TracegateIntegration(bridge),
            _logging_integration(),
            *_request_integrations(),
        ],
        # RqIntegration: its job meta holds a second trace id, and its failure events
        # would double ours. RedisIntegration: with Sentry's tracing off it only adds a
        # breadcrumb per command, at ~40 µs each (rq sends ~15 per job).
        disabled_integrations=[RqIntegration(), RedisIntegration()],
        **extra,
    )
    _undo_spotlight_defaults(sentry_sdk.get_client())
    if not config.sentry_debug:
        # sentry-sdk keeps its logger at DEBUG and throws records away in a filter unless
        # its debug option is on: a record made for nothing on every request (~8 µs).
        sentry_logger.setLevel(logging.WARNING)
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
