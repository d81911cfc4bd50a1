"""Logs that connect: every log record carries the trace it was written in.

`TraceContextFilter` adds `trace_id` (hex), `trace_id_uuid` and `span_id` to the
records it sees — put it on your handlers or loggers; `install()` does it for every
record of the process (a log record factory), so sentry-sdk's breadcrumbs, which copy
a record's extra fields, keep them too. `JsonFormatter` writes one JSON object per
line; `TextFormatter` a readable line ending in `trace=… span=…`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from otel import ids
from otel.sentry import current_pin

__all__ = ["JsonFormatter", "TextFormatter", "TraceContextFilter", "install"]

_FIELDS = ("trace_id", "trace_id_uuid", "span_id")
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _annotate(record: logging.LogRecord) -> None:
    if getattr(record, "trace_id", None) is not None:
        return
    current = current_pin()
    if current is None:
        record.trace_id = record.trace_id_uuid = record.span_id = ""
        return
    record.trace_id = ids.trace_id_hex(current.trace_id)
    record.trace_id_uuid = ids.trace_id_uuid(current.trace_id)
    record.span_id = ids.span_id_hex(current.span_id)


class TraceContextFilter(logging.Filter):
    """Adds `trace_id`, `trace_id_uuid` and `span_id` ('' outside a trace) to records."""

    def filter(self, record: logging.LogRecord) -> bool:
        _annotate(record)
        return True


_installed = False


def install() -> None:
    """Annotate every log record of this process (idempotent)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        _annotate(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, trace ids, extras."""

    def format(self, record: logging.LogRecord) -> str:
        _annotate(record)
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _FIELDS:
            entry[key] = getattr(record, key, "")
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry and not key.startswith("_"):
                entry[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """`2026-12-03 10:00:00,000 INFO logger message trace=<hex> span=<hex>`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        _annotate(record)
        line = super().format(record)
        trace_id = getattr(record, "trace_id", "")
        span_id = getattr(record, "span_id", "")
        return f"{line} trace={trace_id} span={span_id}" if trace_id else line
