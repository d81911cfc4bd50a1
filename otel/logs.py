"""Logs that connect: every log record carries the trace it was written in.

`TraceContextFilter` adds `trace_id` (hex), `trace_id_uuid` and `span_id` to the
records it sees — put it on your handlers or loggers. `install()` gives every record
of the process `otel_trace_id`, `otel_trace_id_uuid` and `otel_span_id` (a log record
factory; prefixed so that a user's own `extra={"trace_id": ...}` keeps working), so
sentry-sdk's breadcrumbs, which copy a record's extra fields, keep them too.
`JsonFormatter` writes one JSON object per line; `TextFormatter` a readable line
ending in `trace=… span=…`.
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
# The record factory's names: a user's own `extra={"trace_id": ...}` must still work
# (logging refuses extras that overwrite a record attribute).
_FACTORY_FIELDS = tuple(f"otel_{name}" for name in _FIELDS)
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _current() -> tuple[str, str, str]:
    current = current_pin()
    if current is None:
        return "", "", ""
    return (
        ids.trace_id_hex(current.trace_id),
        ids.trace_id_uuid(current.trace_id),
        ids.span_id_hex(current.span_id),
    )


def _ids(record: logging.LogRecord) -> tuple[str, str, str]:
    """The record's trace ids: the factory's, the filter's, else the current ones.

    The factory's come first: a `trace_id` on a record may be a user's own extra."""
    for names in (_FACTORY_FIELDS, _FIELDS):
        if getattr(record, names[0], None) is not None:
            return tuple(str(getattr(record, n, "")) for n in names)  # type: ignore[return-value]
    return _current()


class TraceContextFilter(logging.Filter):
    """Adds `trace_id`, `trace_id_uuid` and `span_id` ('' outside a trace) to records."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "trace_id", None) is None:
            for name, value in zip(_FIELDS, _ids(record), strict=True):
                setattr(record, name, value)
        return True


_installed = False


def install() -> None:
    """Give every log record of this process `otel_trace_id`, `otel_trace_id_uuid` and
    `otel_span_id` (idempotent); the formatters here print them as `trace_id`…"""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        for name, value in zip(_FACTORY_FIELDS, _current(), strict=True):
            setattr(record, name, value)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, trace ids, extras."""

    def format(self, record: logging.LogRecord) -> str:
        trace_ids = _ids(record)
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(zip(_FIELDS, trace_ids, strict=True))
        for key, value in record.__dict__.items():
            if key in _STANDARD or key in _FACTORY_FIELDS or key.startswith("_"):
                continue
            if key in entry:
                if key in _FIELDS and value == entry[key]:
                    continue  # the filter's copy of the same id
                key = f"extra_{key}"  # a user's own field by one of our names: kept aside
            entry[key] = value if isinstance(value, (str, int, float, bool)) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """`2026-12-03 10:00:00,000 INFO logger message trace=<hex> span=<hex>`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        trace_id, _, span_id = _ids(record)
        line = super().format(record)
        return f"{line} trace={trace_id} span={span_id}" if trace_id else line
