"""otel.batch: the batch processor behind every exporter, against a real OTLP receiver."""

from __future__ import annotations

import os
import threading
import time

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from otel.batch import CountingBatchSpanProcessor
from otel.counters import Counters
from tests.peers.otlp import OTLPReceiver

THREAD = "tracegate-batch-export"


def _pipeline(
    receiver: OTLPReceiver, **environ: str
) -> tuple[TracerProvider, CountingBatchSpanProcessor, Counters]:
    counters = Counters()
    processor = CountingBatchSpanProcessor(
        OTLPSpanExporter(endpoint=receiver.endpoint + "/v1/traces"),
        counters,
        "otlp",
        environ={"OTEL_BSP_SCHEDULE_DELAY": "60000", **environ},
    )
    provider = TracerProvider(resource=Resource.create({"service.name": "batch-test"}))
    provider.add_span_processor(processor)
    return provider, processor, counters


def _export_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name == THREAD)


def test_a_forked_child_starts_no_export_thread_until_it_has_spans(
    otlp_receiver: OTLPReceiver,
) -> None:
    provider, processor, _ = _pipeline(otlp_receiver)
    tracer = provider.get_tracer("tests")
    tracer.start_span("queued in the parent").end()  # waits 60 s in the parent's queue
    before = _export_threads()
    pid = os.fork()
    if pid == 0:  # the child: a work horse that makes one span of its own
        code = 0
        try:
            if _export_threads() != 0:
                code = 3  # a thread of the parent's survived the fork
            else:
                tracer.start_span("made in the child").end()
                processor.force_flush(5000)
                code = 0 if _export_threads() == 1 else 4
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _export_threads() == before
    processor.force_flush(5000)
    otlp_receiver.wait_for_spans(lambda s: True, 2)
    time.sleep(0.2)  # anything exported twice would be here by now
    names = sorted(s.name for s in otlp_receiver.spans)
    assert names == ["made in the child", "queued in the parent"]
    provider.shutdown()


def test_a_full_queue_drops_the_oldest_and_counts_it(otlp_receiver: OTLPReceiver) -> None:
    provider, processor, counters = _pipeline(
        otlp_receiver, OTEL_BSP_MAX_QUEUE_SIZE="2", OTEL_BSP_MAX_EXPORT_BATCH_SIZE="5"
    )
    tracer = provider.get_tracer("tests")
    for number in range(5):
        tracer.start_span(f"span {number}").end()
    assert counters.get("spans_dropped", exporter="otlp", reason="queue_full") == 3
    processor.force_flush(5000)
    otlp_receiver.wait_for_spans(lambda s: True, 2)
    assert sorted(s.name for s in otlp_receiver.spans) == ["span 3", "span 4"]
    provider.shutdown()


def test_a_full_batch_goes_out_before_the_schedule_and_unsampled_spans_never(
    otlp_receiver: OTLPReceiver,
) -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    provider, processor, counters = _pipeline(otlp_receiver, OTEL_BSP_MAX_EXPORT_BATCH_SIZE="3")
    tracer = provider.get_tracer("tests")
    quiet = TracerProvider(sampler=ALWAYS_OFF)
    quiet.add_span_processor(processor)
    quiet.get_tracer("tests").start_span("unsampled").end()
    for number in range(3):
        tracer.start_span(f"span {number}").end()
    # The schedule says 60 s; a full batch does not wait for it.
    otlp_receiver.wait_for_spans(lambda s: True, 3, timeout=10)
    assert "unsampled" not in {s.name for s in otlp_receiver.spans}
    assert counters.get("spans_dropped", exporter="otlp", reason="queue_full") == 0
    provider.shutdown()


def test_an_unreachable_collector_counts_the_batch_as_lost(silent_server: str) -> None:
    counters = Counters()
    processor = CountingBatchSpanProcessor(
        OTLPSpanExporter(endpoint=silent_server + "/v1/traces", timeout=0.3),
        counters,
        "otlp",
        environ={"OTEL_BSP_SCHEDULE_DELAY": "60000"},
    )
    provider = TracerProvider()
    provider.add_span_processor(processor)
    provider.get_tracer("tests").start_span("lost").end()
    processor.force_flush(5000)
    assert counters.get("spans_dropped", exporter="otlp", reason="export_failed") == 1
    provider.shutdown()
