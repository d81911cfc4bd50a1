"""OpenTelemetry spans as Sentry sees them: op, description and status.

Reads both the old and the stable HTTP semantic conventions (`http.method` /
`http.request.method`, `http.status_code` / `http.response.status_code`, …) and the
messaging, database and RPC conventions, so the Sentry side does not depend on
`OTEL_SEMCONV_STABILITY_OPT_IN`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opentelemetry.trace import SpanKind, StatusCode

__all__ = ["http_status", "sentry_op", "sentry_status", "span_description"]

_KIND_OPS = {
    SpanKind.SERVER: "http.server",
    SpanKind.CLIENT: "http.client",
    SpanKind.PRODUCER: "queue.publish",
    SpanKind.CONSUMER: "queue.process",
    SpanKind.INTERNAL: "function",
}
_MESSAGING_OPS = {
    "create": "queue.create",
    "send": "queue.publish",
    "publish": "queue.publish",
    "receive": "queue.receive",
    "process": "queue.process",
    "settle": "queue.settle",
}
# Sentry's own mapping from HTTP codes to span statuses.
_HTTP_STATUSES = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    409: "already_exists",
    413: "failed_precondition",
    429: "resource_exhausted",
    499: "cancelled",
    500: "internal_error",
    501: "unimplemented",
    503: "unavailable",
    504: "deadline_exceeded",
}

Attributes = Mapping[str, Any]


def _first(attributes: Attributes, *keys: str) -> Any:
    for key in keys:
        value = attributes.get(key)
        if value is not None:
            return value
    return None


def http_status(attributes: Attributes) -> int | None:
    value = _first(attributes, "http.response.status_code", "http.status_code")
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def sentry_op(kind: SpanKind, attributes: Attributes) -> str:
    if _first(attributes, "http.request.method", "http.method") is not None:
        if kind is SpanKind.CLIENT:
            return "http.client"
        return "http.server" if kind is SpanKind.SERVER else "http"
    if attributes.get("messaging.system") is not None:
        operation = _first(attributes, "messaging.operation.type", "messaging.operation")
        return _MESSAGING_OPS.get(
            str(operation),
            _KIND_OPS[kind] if kind in (SpanKind.PRODUCER, SpanKind.CONSUMER) else "queue",
        )
    if _first(attributes, "db.system.name", "db.system") is not None:
        return "db"
    if attributes.get("rpc.system") is not None:
        return "rpc.server" if kind is SpanKind.SERVER else "rpc.client"
    return _KIND_OPS.get(kind, "function")


def span_description(name: str, attributes: Attributes) -> str:
    statement = _first(attributes, "db.query.text", "db.statement")
    if statement is not None:
        return str(statement)
    return name


def sentry_status(status_code: StatusCode, attributes: Attributes) -> str:
    code = http_status(attributes)
    if code is not None:
        if code < 400:
            return "ok"
        return _HTTP_STATUSES.get(code, "invalid_argument" if code < 500 else "internal_error")
    return "internal_error" if status_code is StatusCode.ERROR else "ok"
