"""Received OTLP spans: the flat ``ReceivedSpan`` model and the wait API around it.

Owns the conversion from OTLP protobuf (``ExportTraceServiceRequest`` / ``Span``) to
``ReceivedSpan`` and ``SpanInbox`` (``spans``, ``wait_for_span``, ``wait_for_spans``),
shared by the in-house receiver (``peers.otlp``) and the oteltap wrapper
(``peers.oteltap``) so both peers report spans the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from .base import Collector, head, matches

Attributes = dict[str, Any]

_KIND_NAMES: dict[int, str] = {
    value: name.removeprefix("SPAN_KIND_") for name, value in Span.SpanKind.items()
}
_STATUS_NAMES: dict[int, str] = {
    value: name.removeprefix("STATUS_CODE_") for name, value in Status.StatusCode.items()
}


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as it arrived over OTLP, with ids as lower-case hex.

    ``kind`` and ``status_code`` are the OTLP wire numbers. Careful: OTLP's SpanKind is
    shifted by one against ``opentelemetry.trace.SpanKind`` (OTLP SERVER == 2, the SDK's
    SpanKind.SERVER == 1), so compare ``kind_name`` with ``SpanKind.SERVER.name``.
    Status codes agree with ``opentelemetry.trace.StatusCode`` (UNSET 0, OK 1, ERROR 2).
    """

    trace_id_hex: str
    span_id_hex: str
    parent_span_id_hex: str
    name: str
    kind: int
    attributes: Attributes
    status_code: int
    status_message: str
    events: list[tuple[str, Attributes]]
    links: list[tuple[str, str, Attributes]]
    resource: Attributes
    start_time_ns: int
    end_time_ns: int
    scope_name: str = ""
    trace_state: str = field(default="", compare=False)

    @property
    def kind_name(self) -> str:
        """``INTERNAL``, ``SERVER``, ``CLIENT``, ``PRODUCER``, ``CONSUMER`` or ``UNSPECIFIED``."""
        return _KIND_NAMES.get(self.kind, str(self.kind))

    @property
    def status_name(self) -> str:
        """``UNSET``, ``OK`` or ``ERROR``."""
        return _STATUS_NAMES.get(self.status_code, str(self.status_code))

    @property
    def is_root(self) -> bool:
        return not self.parent_span_id_hex

    @property
    def duration_ns(self) -> int:
        return self.end_time_ns - self.start_time_ns


def any_value(value: AnyValue) -> Any:
    """Convert an OTLP AnyValue to the matching Python value (arrays become lists)."""
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes(value.kvlist_value.values)
    if kind is None:
        return None
    return getattr(value, kind)


def attributes(pairs: Iterable[KeyValue]) -> Attributes:
    return {pair.key: any_value(pair.value) for pair in pairs}


def received_span(
    span: Span, resource: Mapping[str, Any] | None = None, scope_name: str = ""
) -> ReceivedSpan:
    """Flatten one protobuf Span (oteltap hands these over without their resource)."""
    return ReceivedSpan(
        trace_id_hex=span.trace_id.hex(),
        span_id_hex=span.span_id.hex(),
        parent_span_id_hex=span.parent_span_id.hex(),
        name=span.name,
        kind=span.kind,
        attributes=attributes(span.attributes),
        status_code=span.status.code,
        status_message=span.status.message,
        events=[(event.name, attributes(event.attributes)) for event in span.events],
        links=[
            (link.trace_id.hex(), link.span_id.hex(), attributes(link.attributes))
            for link in span.links
        ],
        resource=dict(resource or {}),
        start_time_ns=span.start_time_unix_nano,
        end_time_ns=span.end_time_unix_nano,
        scope_name=scope_name,
        trace_state=span.trace_state,
    )


def spans_from_request(request: ExportTraceServiceRequest) -> list[ReceivedSpan]:
    """Flatten every span of an export request, each carrying its resource attributes."""
    flat: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            flat.extend(
                received_span(span, resource, scope_spans.scope.name) for span in scope_spans.spans
            )
    return flat


def describe_span(span: ReceivedSpan) -> str:
    return (
        f"{span.name!r} kind={span.kind_name} trace={span.trace_id_hex} "
        f"span={span.span_id_hex} parent={span.parent_span_id_hex or '-'} "
        f"status={span.status_name}"
    )


class SpanInbox:
    """Spans received by a peer, with the wait API tests use."""

    def __init__(self) -> None:
        self._received: Collector[ReceivedSpan] = Collector()

    @property
    def spans(self) -> list[ReceivedSpan]:
        return self._received.snapshot()

    def clear(self) -> None:
        self._received.clear()

    def wait_for_span(
        self, predicate: Callable[[ReceivedSpan], bool], timeout: float = 10.0
    ) -> ReceivedSpan:
        """Return the first received span matching ``predicate``; AssertionError on timeout."""
        return self.wait_for_spans(predicate, 1, timeout)[0]

    def wait_for_spans(
        self, predicate: Callable[[ReceivedSpan], bool], count: int, timeout: float = 10.0
    ) -> list[ReceivedSpan]:
        """Wait until at least ``count`` spans match; return all matching spans so far."""

        def select(spans: Sequence[ReceivedSpan]) -> list[ReceivedSpan]:
            return [span for span in spans if matches(predicate, span)]

        return self._received.wait_until(select, count, timeout, _describe)

    def _add(self, spans: Iterable[ReceivedSpan]) -> None:
        self._received.add(*spans)


def _describe(spans: Sequence[ReceivedSpan]) -> str:
    return head(describe_span(span) for span in spans)
