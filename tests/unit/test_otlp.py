"""tracegate's OTLP span encoding against OpenTelemetry's own: the same
`ExportTraceServiceRequest`, message by message, for generated spans."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as reference
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from otel.otlp import encode_spans

_text = st.text(max_size=12)
_int64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
_scalar = st.one_of(_text, st.booleans(), _int64, st.floats(allow_nan=False))
_value = st.one_of(
    _scalar,
    st.lists(_text, max_size=3).map(tuple),
    st.lists(_int64, max_size=3).map(tuple),
    st.lists(st.booleans(), max_size=3).map(tuple),
    st.lists(st.floats(allow_nan=False), max_size=3).map(tuple),
)
_attributes = st.dictionaries(st.sampled_from(["a", "http.route", "n", "é", "x.y"]), _value)
_ids = st.integers(min_value=1, max_value=2**64 - 1)
_trace_ids = st.integers(min_value=1, max_value=2**128 - 1)
_state = st.sampled_from(
    [None, TraceState([("vendor", "v1")]), TraceState([("a", "1"), ("b", "2")])]
)


@st.composite
def _context(draw: Any, remote: bool | None = None) -> SpanContext:
    return SpanContext(
        draw(_trace_ids),
        draw(_ids),
        is_remote=draw(st.booleans()) if remote is None else remote,
        trace_flags=TraceFlags(draw(st.sampled_from([0, 1]))),
        trace_state=draw(_state),
    )


_resources = st.sampled_from(
    [
        Resource({"service.name": "shop", "process.pid": 42}),
        Resource({"service.name": "other"}, schema_url="https://opentelemetry.io/schemas/1.21.0"),
        Resource({}),
    ]
)
_scopes = st.sampled_from(
    [
        InstrumentationScope("otel.flask"),
        InstrumentationScope("otel.rq", "1.2", "https://opentelemetry.io/schemas/1.21.0"),
        InstrumentationScope("lib", "3", None, {"kind": "test", "n": 2}),
        None,
    ]
)


@st.composite
def _span(draw: Any) -> ReadableSpan:
    start = draw(st.integers(min_value=0, max_value=2**63))
    events = tuple(
        Event(draw(_text), draw(_attributes), timestamp=draw(st.integers(0, 2**63)))
        for _ in range(draw(st.integers(0, 2)))
    )
    links = tuple(Link(draw(_context()), draw(_attributes)) for _ in range(draw(st.integers(0, 2))))
    status = draw(
        st.sampled_from(
            [Status(StatusCode.UNSET), Status(StatusCode.OK), Status(StatusCode.ERROR, "Boom: x")]
        )
    )
    return ReadableSpan(
        name=draw(_text),
        context=draw(_context(remote=False)),
        parent=draw(st.one_of(st.none(), _context())),
        resource=draw(_resources),
        attributes=draw(_attributes),
        events=events,
        links=links,
        kind=draw(st.sampled_from(list(SpanKind))),
        instrumentation_scope=draw(_scopes),
        status=status,
        start_time=start,
        end_time=start + draw(st.integers(0, 10**9)),
    )


def _parsed(body: bytes) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    return request


@settings(max_examples=300, deadline=None)
@given(st.lists(_span(), min_size=1, max_size=6))
def test_the_encoding_is_opentelemetrys(spans: list[ReadableSpan]) -> None:
    ours = _parsed(encode_spans(spans))
    theirs = reference(spans)
    assert ours == theirs
    # Twice: the second time from the cache of attribute pairs.
    assert _parsed(encode_spans(spans)) == theirs


def test_an_attribute_value_without_an_encoding_is_refused() -> None:
    span = ReadableSpan(
        name="x",
        context=SpanContext(1, 2, False),
        attributes={"bad": object()},  # type: ignore[dict-item]
    )
    try:
        encode_spans([span])
    except ValueError as error:
        assert "object" in str(error)
    else:
        raise AssertionError("encoded a value OTLP has no type for")
