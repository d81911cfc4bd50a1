"""A work horse's spans survive the hand-over intact and reach the parent's processors."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from otel.handoff import HandoffProcessor
from otel.propagation import SpecTraceState


def test_buffered_spans_cross_over_with_everything_they_carry() -> None:
    horse_exporter, parent_exporter = InMemorySpanExporter(), InMemorySpanExporter()
    horse = HandoffProcessor([SimpleSpanProcessor(horse_exporter)])
    provider = TracerProvider()
    provider.add_span_processor(horse)
    tracer = provider.get_tracer("test", "1.2")
    remote = trace.SpanContext(
        0x4BF92F3577B34DA6A3CE929D0E0E4736,
        0x00F067AA0BA902B7,
        True,
        trace.TraceFlags(1),
        SpecTraceState([("vendor@x", "1")]),
    )

    horse.start_buffering()
    parent_ctx = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    with tracer.start_as_current_span(
        "process default",
        context=parent_ctx,
        kind=SpanKind.CONSUMER,
        links=[Link(remote, {"why": "creation"})],
        attributes={"n": 1, "tags": ("a", "b")},
    ) as consumer:
        consumer.add_event("checkpoint", {"at": 3})
        with tracer.start_as_current_span("inside") as inner:
            inner.set_status(Status(StatusCode.ERROR, "broken"))
    payload = horse.dump()
    assert horse_exporter.get_finished_spans() == ()  # nothing exported by the horse
    assert payload is not None and horse.dump() is None

    parent = HandoffProcessor([SimpleSpanProcessor(parent_exporter)])
    assert parent.load(payload) == 2
    spans = {s.name: s for s in parent_exporter.get_finished_spans()}
    got, sent = spans["process default"], consumer
    assert got.context == sent.get_span_context()
    assert got.parent is not None and got.parent.span_id == remote.span_id
    assert got.parent.trace_state.to_header() == "vendor@x=1"
    assert got.kind is SpanKind.CONSUMER
    assert dict(got.attributes or {}) == {"n": 1, "tags": ("a", "b")}
    assert [(e.name, dict(e.attributes or {})) for e in got.events] == [("checkpoint", {"at": 3})]
    assert got.links[0].context.span_id == remote.span_id
    assert got.instrumentation_scope is not None and got.instrumentation_scope.version == "1.2"
    assert spans["inside"].parent is not None
    assert spans["inside"].parent.span_id == got.context.span_id
    assert spans["inside"].status.status_code is StatusCode.ERROR
    assert spans["inside"].status.description == "broken"


def test_outside_a_work_horse_spans_go_straight_through() -> None:
    exporter = InMemorySpanExporter()
    processor = HandoffProcessor([SimpleSpanProcessor(exporter)])
    provider = TracerProvider()
    provider.add_span_processor(processor)
    provider.get_tracer("test").start_span("plain").end()
    assert [s.name for s in exporter.get_finished_spans()] == ["plain"]
    assert processor.dump() is None
