"""Counters of losses: counting, handing over between processes, Prometheus text."""

from __future__ import annotations

import re

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel import handoff
from otel.counters import COUNTERS, Counters, render_prometheus


def test_counts_by_labels_and_in_total() -> None:
    counters = Counters()
    counters.add("spans_dropped", 3, exporter="otlp", reason="queue_full")
    counters.add("spans_dropped", exporter="otlp", reason="queue_full")
    counters.add("spans_dropped", 2, exporter="store", reason="export_failed")
    counters.add("events_dropped", 0, reason="network_error")  # nothing counted
    assert counters.get("spans_dropped", exporter="otlp", reason="queue_full") == 4
    assert counters.get("spans_dropped") == 6
    assert counters.get("events_dropped") == 0
    with pytest.raises(KeyError):
        counters.add("no_such_counter")


def test_a_work_horses_counts_are_added_to_its_workers() -> None:
    horse, worker = Counters(), Counters()
    horse.add("flush_deadline_missed", what="sentry flush")
    worker.add("flush_deadline_missed", 2, what="sentry flush")
    payload = horse.dump()
    assert payload is not None and Counters().dump() is None
    worker.load(payload)
    assert worker.get("flush_deadline_missed", what="sentry flush") == 3


def test_prometheus_text_has_every_counter_and_escapes_labels() -> None:
    counters = Counters()
    counters.add("inbound_headers_invalid", 5, header='trace"parent\\\n')
    text = render_prometheus([({"service": "api", "process": "h:1"}, counters.snapshot())])
    for name in COUNTERS:
        assert f"# TYPE tracegate_{name}_total counter" in text
    (line,) = [x for x in text.splitlines() if x.startswith("tracegate_inbound")]
    assert line == (
        'tracegate_inbound_headers_invalid_total{header="trace\\"parent\\\\\\n",'
        'process="h:1",service="api"} 5'
    )
    assert all(re.fullmatch(r"(# .*|tracegate_\w+(\{.*\})? \d+)", x) for x in text.splitlines())


def test_a_full_handoff_buffer_counts_what_it_drops(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handoff, "_MAX_BUFFERED", 2)
    counters = Counters()
    exporter = InMemorySpanExporter()
    processor = handoff.HandoffProcessor([SimpleSpanProcessor(exporter)], counters)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    processor.start_buffering()
    for n in range(5):
        provider.get_tracer("test").start_span(f"s{n}").end()
    assert processor.release() == 2
    assert [s.name for s in exporter.get_finished_spans()] == ["s0", "s1"]
    assert counters.get("spans_dropped", exporter="handoff", reason="buffer_full") == 3
