"""Log records carry the trace they were written in."""

from __future__ import annotations

import io
import json
import logging

from opentelemetry.sdk.trace import TracerProvider

from otel.logs import JsonFormatter, TextFormatter, TraceContextFilter, install


def _capture(formatter: logging.Formatter) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(TraceContextFilter())
    logger = logging.getLogger(f"test.logs.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger, stream


def test_json_lines_carry_both_spellings_and_the_span() -> None:
    logger, stream = _capture(JsonFormatter())
    tracer = TracerProvider().get_tracer("t")
    with tracer.start_as_current_span("work") as span:
        logger.info("charged %s", "card", extra={"order": 7})
    logger.info("outside")
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    context = span.get_span_context()
    assert inside["trace_id"] == f"{context.trace_id:032x}"
    assert inside["trace_id_uuid"].replace("-", "") == inside["trace_id"]
    assert inside["span_id"] == f"{context.span_id:016x}"
    assert inside["message"] == "charged card" and inside["order"] == 7
    assert outside["trace_id"] == "" and outside["message"] == "outside"


def test_text_lines_end_with_the_trace() -> None:
    logger, stream = _capture(TextFormatter())
    with TracerProvider().get_tracer("t").start_as_current_span("work") as span:
        logger.info("hello")
    line = stream.getvalue().strip()
    context = span.get_span_context()
    assert line.endswith(f"hello trace={context.trace_id:032x} span={context.span_id:016x}")


def test_installed_factory_leaves_users_extra_trace_id_alone() -> None:
    install()
    logger, stream = _capture(JsonFormatter())
    make = logging.getLogRecordFactory()
    with TracerProvider().get_tracer("t").start_as_current_span("work") as span:
        logger.info("theirs", extra={"trace_id": "their-own-id"})  # no KeyError
        inside = make("x", logging.INFO, "", 0, "m", None, None)
    outside = make("x", logging.INFO, "", 0, "m", None, None)
    (line,) = (json.loads(line) for line in stream.getvalue().splitlines())
    trace_id = f"{span.get_span_context().trace_id:032x}"
    assert line["trace_id"] == trace_id and line["span_id"]  # the real ids win
    assert line["extra_trace_id"] == "their-own-id"  # and theirs is kept
    assert inside.otel_trace_id == trace_id
    assert outside.otel_trace_id == ""
