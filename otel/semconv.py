"""OpenTelemetry spans as Sentry sees them: op, description, status, and the span JSON.

Reads both the old and the stable HTTP semantic conventions (`http.method` /
`http.request.method`, `http.status_code` / `http.response.status_code`, …) and the
messaging, database and RPC conventions, so the Sentry side does not depend on
`OTEL_SEMCONV_STABILITY_OPT_IN`.

`span_json` writes a finished child span as the JSON text of a Sentry span. It runs
for every span of every sampled trace, so it is built for speed: one string template,
JSON numbers for the timestamps straight from the nanoseconds, the attributes encoded
by the C JSON encoder without a copy, the description's JSON kept per name.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

__all__ = [
    "ORIGIN",
    "attribute_dict",
    "finite",
    "http_status",
    "json_default",
    "json_encoder",
    "sentry_fields",
    "sentry_op",
    "sentry_status",
    "span_description",
    "span_json",
]

# Sentry's `origin` of every span and transaction the bridge builds.
ORIGIN = "auto.otel.tracegate"

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


# Every attribute the mappings above read: a span with none of them (most INTERNAL
# spans) maps from its kind and status alone, without the lookups.
_MAPPED = frozenset(
    (
        "http.request.method",
        "http.method",
        "http.response.status_code",
        "http.status_code",
        "messaging.system",
        "db.system.name",
        "db.system",
        "db.query.text",
        "db.statement",
        "rpc.system",
    )
)


def sentry_fields(
    kind: SpanKind, name: str, status_code: StatusCode, attributes: Attributes
) -> tuple[str, str, str]:
    """`sentry_op`, `span_description` and `sentry_status` of one span, in one call."""
    if _MAPPED.isdisjoint(attributes):
        status = "internal_error" if status_code is StatusCode.ERROR else "ok"
        return _KIND_OPS.get(kind, "function"), name, status
    return (
        sentry_op(kind, attributes),
        span_description(name, attributes),
        sentry_status(status_code, attributes),
    )


# -- JSON -------------------------------------------------------------------------------


def json_default(value: Any) -> Any:
    """What sentry-sdk's serialiser makes of values JSON does not know."""
    from sentry_sdk.utils import AnnotatedValue, format_timestamp, safe_repr

    if isinstance(value, AnnotatedValue):
        return value.value
    if isinstance(value, datetime.datetime):
        return format_timestamp(value)
    return safe_repr(value)


def json_encoder(check_circular: bool = True) -> Callable[[Any], str]:
    """Compact JSON text of a value; NaN and infinities raise ValueError (Sentry
    rejects them), other types go through `json_default`.

    The C encoder is called directly: `json.dumps` costs three times as much on small
    values. Without `check_circular` it is for values known to be flat (span
    attributes); with it, a cycle (in a user's Sentry context) raises ValueError.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # not CPython
        return json.JSONEncoder(
            allow_nan=False,
            separators=(",", ":"),
            default=json_default,
            check_circular=check_circular,
        ).encode
    ascii_string = json.encoder.encode_basestring_ascii
    if not check_circular:
        encode = make(None, json_default, ascii_string, None, ":", ",", False, False, False)
        return lambda value: "".join(encode(value, 0))

    def encode_checked(value: Any) -> str:
        encode = make({}, json_default, ascii_string, None, ":", ",", False, False, False)
        return "".join(encode(value, 0))

    return encode_checked


def finite(value: Any) -> Any:
    """A copy with NaN and infinities as their repr, as sentry-sdk's serialiser has them."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def attribute_dict(span: ReadableSpan) -> Mapping[str, Any]:
    """The span's attributes as a `dict`, read only, without a copy where possible.

    `ReadableSpan.attributes` is a read-only proxy over the SDK's `BoundedAttributes`,
    a Python mapping: copying it into a dict costs more than encoding the dict. Its
    storage is a plain `dict` (or, for spans a work horse handed over, the `dict`
    itself), used when it is there; otherwise the copy.
    """
    stored = getattr(span, "_attributes", None)
    if type(stored) is dict:
        return stored
    inner = getattr(stored, "_dict", None)
    if isinstance(inner, dict):
        return inner
    return dict(span.attributes or {})


_flat_json = json_encoder(check_circular=False)
_SPAN = (
    '{"trace_id":"%s","span_id":"%016x","parent_span_id":"%016x","op":"%s",'
    '"description":%s,"status":"%s","start_timestamp":%d.%09d,"timestamp":%d.%09d,'
    '"origin":"' + ORIGIN + '","data":%s}'
)
# JSON text of span names (and statements) seen lately: they repeat.
_descriptions: dict[str, str] = {}
# Attribute keys -> whether the denylist names them (for the denylist last seen).
_denied: dict[str, bool] = {}
_denied_by: list[frozenset[str]] = [frozenset()]
_CACHE_LIMIT = 4096
_NS = 1_000_000_000


def span_json(
    span: ReadableSpan, trace_hex: str, deny: frozenset[str]
) -> tuple[str, tuple[str, ...]]:
    """A finished span with a local parent as a Sentry span's JSON text, and the keys
    of the attributes it filtered.

    Attributes whose lower-cased key is in `deny` are replaced by `[Filtered]`, as
    sentry-sdk's event scrubber does to span data. `op` and `status` come from the
    fixed vocabularies above, so they need no escaping.
    """
    context = span.context
    parent = span.parent
    assert context is not None and parent is not None
    attributes = attribute_dict(span)
    filtered: tuple[str, ...] = ()
    if _MAPPED.isdisjoint(attributes):
        op = _KIND_OPS.get(span.kind, "function")
        description = span.name
        status = "internal_error" if span.status.status_code is StatusCode.ERROR else "ok"
    else:
        op, description, status = sentry_fields(
            span.kind, span.name, span.status.status_code, attributes
        )
    described = _descriptions.get(description)
    if described is None:
        if len(_descriptions) >= _CACHE_LIMIT:
            _descriptions.clear()
        described = _descriptions[description] = json.dumps(description)
    if deny:
        if deny is not _denied_by[0]:
            _denied.clear()
            _denied_by[0] = deny
        for key in attributes:
            denied = _denied.get(key)
            if denied is None:
                if len(_denied) >= _CACHE_LIMIT:
                    _denied.clear()
                denied = _denied[key] = key.lower() in deny
            if denied:
                filtered = tuple(k for k in attributes if k.lower() in deny)
                attributes = {
                    k: "[Filtered]" if k in filtered else v for k, v in attributes.items()
                }
                break
    try:
        data = _flat_json(attributes)
    except ValueError:  # NaN or infinity: Sentry wants them as text
        data = _flat_json(finite(attributes))
    start = span.start_time or 0
    end = span.end_time or start
    text = _SPAN % (
        trace_hex,
        context.span_id,
        parent.span_id,
        op,
        described,
        status,
        start // _NS,
        start % _NS,
        end // _NS,
        end % _NS,
        data,
    )
    return text, filtered
