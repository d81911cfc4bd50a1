"""The composite propagator: W3C trace context first, then sentry-trace, then X-Trace-ID.

`TracegatePropagator` is added *after* whatever `OTEL_PROPAGATORS` configured (see
`compose`), never instead of it, so a user's b3 or jaeger propagators keep working.

Extract, in DESIGN.md's order of precedence:

1. a valid `traceparent` (+ `tracestate`, parsed by the current W3C grammar, which
   keeps members OpenTelemetry's stricter parser drops);
2. else a valid `sentry-trace` (+ the `sentry-*` members of `baggage`); a
   `sentry-trace` without a sampled flag defers the decision to the local sampler;
3. else a valid `X-Trace-ID` (UUID or 32 hex): its id is adopted by the next local
   root span through `AdoptingIdGenerator`;
4. else nothing: a new trace.

Inject writes `traceparent`, `tracestate`, `sentry-trace` and `baggage` with one
sampled decision: the W3C flag, the sentry-trace flag and `sentry-sampled` agree.
Sentry's `sentry-*` members are merged into W3C baggage, never replacing the rest.
Baggage is held to W3C's 64 members and 8192 bytes both ways, `sentry-*` members first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote

from opentelemetry import baggage as otel_baggage
from opentelemetry import trace
from opentelemetry.context import Context, get_value, set_value
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from otel import ids
from otel.counters import Counters

__all__ = [
    "ADOPTED_TRACE_ID_KEY",
    "DEFERRED_SAMPLING_KEY",
    "AdoptingIdGenerator",
    "DscDefaults",
    "SpecTraceState",
    "TracegatePropagator",
    "compose",
    "sample_rand",
]

ADOPTED_TRACE_ID_KEY = "tracegate.adopted_trace_id"
DEFERRED_SAMPLING_KEY = "tracegate.deferred_sampling"

_TRACEPARENT = "traceparent"
_TRACESTATE = "tracestate"
_BAGGAGE = "baggage"
_SENTRY_TRACE = "sentry-trace"
_X_TRACE_ID = "x-trace-id"
_SENTRY_PREFIX = "sentry-"
# W3C Baggage: at least 64 members and 8192 bytes must be propagated; we send no more.
_BAGGAGE_MAX_MEMBERS = 64
_BAGGAGE_MAX_BYTES = 8192
# How much of an inbound baggage header is looked at, so that a `sentry-*` member behind
# many others is still found while a huge hostile header costs bounded work.
_BAGGAGE_SCAN_BYTES = 8 * _BAGGAGE_MAX_BYTES
# RFC 7230 OWS: str.strip() with no argument would also eat CR, LF and Unicode spaces.
_OWS = " \t"
# W3C Baggage `value = *baggage-octet`: printable US-ASCII but DQUOTE, comma, semicolon and
# backslash; CR, LF, NUL and non-ASCII make a member malformed (it is skipped).
_BAGGAGE_VALUE_RE = re.compile(r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*")
_LOW_56 = (1 << 56) - 1


class SpecTraceState(TraceState):
    """A TraceState validated by the current W3C grammar (`otel.ids`), not OpenTelemetry's.

    OpenTelemetry Python rejects keys the current spec allows and drops a whole
    header over one duplicate; this keeps what the spec keeps. Instances survive the
    SDK untouched: samplers hand the parent's trace state to the child as is.
    """

    def __init__(self, entries: Sequence[tuple[str, str]] | None = None) -> None:
        self._dict: dict[str, str] = {}
        for key, value in entries or ():
            if key not in self._dict and len(self._dict) < 32 and _valid_member(key, value):
                self._dict[key] = value

    def add(self, key: str, value: str) -> TraceState:
        if key in self._dict or len(self._dict) >= 32 or not _valid_member(key, value):
            return self
        return SpecTraceState([(key, value), *self._dict.items()])

    def update(self, key: str, value: str) -> TraceState:
        if not _valid_member(key, value):
            return self
        rest = [(k, v) for k, v in self._dict.items() if k != key]
        return SpecTraceState([(key, value), *rest][:32])

    def delete(self, key: str) -> TraceState:
        if key not in self._dict:
            return self
        return SpecTraceState([(k, v) for k, v in self._dict.items() if k != key])

    def to_header(self) -> str:
        return ids.format_tracestate(self._dict.items())

    @classmethod
    def from_header(cls, header_list: list[str]) -> TraceState:
        return cls(ids.parse_tracestate(header_list))


def _valid_member(key: str, value: str) -> bool:
    return ids.is_valid_tracestate_key(key) and ids.is_valid_tracestate_value(value)


@dataclass(frozen=True)
class DscDefaults:
    """What this service puts in Sentry's dynamic sampling context when it heads a trace."""

    public_key: str = ""
    environment: str = ""
    release: str = ""
    sample_rate: float | None = None


def sample_rand(trace_id: int) -> float:
    """Sentry's `sample_rand` from the trace id, so Sentry and OpenTelemetry agree.

    tracegate's ratio sampler samples iff the low 56 bits of the trace id are below
    `rate * 2**56`; Sentry samples iff `sample_rand < sample_rate`. Deriving
    `sample_rand` from those same bits makes every downstream Sentry SDK reach the
    same decision as our sampler for any rate.
    """
    value = (trace_id & _LOW_56) / float(1 << 56)
    # Six decimals as Sentry writes them, truncated so it never rounds up to 1.0.
    return math.floor(value * 1_000_000) / 1_000_000


class TracegatePropagator(TextMapPropagator):
    """W3C trace context + baggage, sentry-trace and X-Trace-ID, with one precedence."""

    def __init__(self, dsc: DscDefaults | None = None, counters: Counters | None = None) -> None:
        self.dsc = dsc or DscDefaults()
        # Counts headers that were present but invalid (`inbound_headers_invalid`).
        self.counters = counters

    @property
    def fields(self) -> set[str]:
        return {_TRACEPARENT, _TRACESTATE, _BAGGAGE, _SENTRY_TRACE, _X_TRACE_ID}

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        ctx = context if context is not None else Context()
        raw_parents = getter.get(carrier, _TRACEPARENT)
        parent = ids.parse_traceparent(_single(raw_parents))
        members = _parse_baggage(getter.get(carrier, _BAGGAGE))
        if self.counters is not None:
            self._count_invalid(carrier, getter, raw_parents, parent is not None)
        if parent is None:
            ctx = _without_rejected_parent(ctx, raw_parents)
        if parent is not None:
            state = SpecTraceState(ids.parse_tracestate(getter.get(carrier, _TRACESTATE)))
            span_context = SpanContext(
                parent.trace_id, parent.span_id, True, TraceFlags(parent.flags & 0xFF), state
            )
            return _with_baggage(_with_parent(ctx, span_context), members)
        if _has_valid_span(ctx):
            # Another configured propagator (b3, jaeger…) found a parent: keep it.
            return _with_baggage(ctx, members)
        sentry = ids.parse_sentry_trace(_single(getter.get(carrier, _SENTRY_TRACE)))
        if sentry is not None:
            sampled = sentry.sampled
            if sampled is None:
                sampled = _baggage_sampled(members)
            flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
            span_context = SpanContext(sentry.trace_id, sentry.span_id, True, flags)
            ctx = _with_parent(ctx, span_context)
            if sampled is None:
                ctx = set_value(DEFERRED_SAMPLING_KEY, True, ctx)
            return _with_baggage(ctx, members)
        adopted = ids.parse_x_trace_id(_single(getter.get(carrier, _X_TRACE_ID)))
        if adopted is not None:
            ctx = set_value(ADOPTED_TRACE_ID_KEY, adopted, ctx)
        return _with_baggage(ctx, members)

    def _count_invalid(
        self,
        carrier: CarrierT,
        getter: Getter[CarrierT],
        raw_parents: Sequence[str] | None,
        parent_valid: bool,
    ) -> None:
        assert self.counters is not None
        if raw_parents and not parent_valid:
            self.counters.add("inbound_headers_invalid", header=_TRACEPARENT)
        for name, parse in (
            (_SENTRY_TRACE, ids.parse_sentry_trace),
            (_X_TRACE_ID, ids.parse_x_trace_id),
        ):
            raw = getter.get(carrier, name)
            if raw and parse(_single(raw)) is None:
                self.counters.add("inbound_headers_invalid", header=name)

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        span_context = trace.get_current_span(context).get_span_context()
        members = [(k, v) for k, v in otel_baggage.get_all(context).items() if isinstance(v, str)]
        if span_context.is_valid:
            trace_id, span_id = span_context.trace_id, span_context.span_id
            sampled = span_context.trace_flags.sampled
            setter.set(
                carrier,
                _TRACEPARENT,
                ids.format_traceparent(trace_id, span_id, span_context.trace_flags),
            )
            state = ids.format_tracestate(span_context.trace_state.items())
            if state:
                setter.set(carrier, _TRACESTATE, state)
            setter.set(carrier, _SENTRY_TRACE, ids.format_sentry_trace(trace_id, span_id, sampled))
            members = self.merge_dsc(members, trace_id, sampled)
        header = _format_baggage(members)
        if header:
            setter.set(carrier, _BAGGAGE, header)

    def dsc_for(
        self, trace_id: int, sampled: bool, inbound: Mapping[str, str] | None = None
    ) -> dict[str, str]:
        """Sentry's dynamic sampling context for a trace, as `sentry-*`-less keys.

        An upstream Sentry SDK that headed this trace owns the context (it is frozen
        at the head); ours is used only when there is none for this trace id. The
        sampled flag is always ours, so that header flags and baggage agree.
        """
        hex_id = ids.trace_id_hex(trace_id)
        if inbound and inbound.get("trace_id") == hex_id:
            dsc = dict(inbound)
        else:
            dsc = {"trace_id": hex_id}
            if self.dsc.public_key:
                dsc["public_key"] = self.dsc.public_key
            if self.dsc.environment:
                dsc["environment"] = self.dsc.environment
            if self.dsc.release:
                dsc["release"] = self.dsc.release
            if self.dsc.sample_rate is not None:
                dsc["sample_rate"] = _decimal(self.dsc.sample_rate)
            dsc["sample_rand"] = f"{sample_rand(trace_id):.6f}"
        dsc["sampled"] = "true" if sampled else "false"
        return dsc

    def merge_dsc(
        self, members: Iterable[tuple[str, str]], trace_id: int, sampled: bool
    ) -> list[tuple[str, str]]:
        others: list[tuple[str, str]] = []
        inbound: dict[str, str] = {}
        for key, value in members:
            if key.startswith(_SENTRY_PREFIX):
                inbound[key[len(_SENTRY_PREFIX) :]] = value
            else:
                others.append((key, value))
        dsc = self.dsc_for(trace_id, sampled, inbound)
        return others + [(_SENTRY_PREFIX + k, v) for k, v in dsc.items()]


class AdoptingIdGenerator(RandomIdGenerator):
    """Random ids, except that a new root adopts the trace id of an inbound X-Trace-ID.

    The SDK asks for a trace id without passing the context, so the adopted id is
    read from the current context, where instrumentations attach what they extracted
    before they start the server span.
    """

    def generate_trace_id(self) -> int:
        adopted = get_value(ADOPTED_TRACE_ID_KEY)
        if isinstance(adopted, int) and adopted:
            return adopted
        return super().generate_trace_id()

    def is_trace_id_random(self) -> bool:
        # W3C Level 2's random flag promises randomness a caller's id may not have
        # (UUIDv1, UUIDv7, a counter): an adopted id goes out without it.
        adopted = get_value(ADOPTED_TRACE_ID_KEY)
        return not (isinstance(adopted, int) and adopted)


def compose(current: TextMapPropagator, ours: TracegatePropagator) -> TextMapPropagator:
    """The user's propagators followed by ours; ours replaces an earlier copy of itself.

    Ours runs last on extract so that a valid `traceparent` wins and its tracestate is
    parsed by the current grammar; it leaves a parent found by another propagator alone
    when the request carries no `traceparent`.
    """
    if isinstance(current, CompositePropagator):
        kept = [p for p in current._propagators if not isinstance(p, TracegatePropagator)]
    elif isinstance(current, TracegatePropagator):
        kept = []
    else:
        kept = [current]
    return CompositePropagator([*kept, ours])


def _single(values: Sequence[str] | None) -> str | None:
    # Two traceparent (or sentry-trace) headers name two parents: neither can be trusted.
    if not values or len(values) != 1:
        return None
    return values[0]


def _has_valid_span(ctx: Context) -> bool:
    return trace.get_current_span(ctx).get_span_context().is_valid


def _without_rejected_parent(ctx: Context, raw_parents: Sequence[str] | None) -> Context:
    """Forget a parent that a laxer W3C propagator took from a `traceparent` we rejected.

    OpenTelemetry's `tracecontext` propagator (in `OTEL_PROPAGATORS` by default, and run
    before ours) matches with `$`, which also matches before a trailing newline, and reads
    only the first of several `traceparent` fields. Its parent would otherwise pass for one
    found by b3 or jaeger and outrank `sentry-trace` and `X-Trace-ID`, although W3C says an
    invalid `traceparent` is ignored and the trace restarts.
    """
    span_context = trace.get_current_span(ctx).get_span_context()
    if not raw_parents or not span_context.is_valid:
        return ctx
    ids_text = f"{span_context.trace_id:032x}-{span_context.span_id:016x}"
    if any(isinstance(raw, str) and ids_text in raw for raw in raw_parents):
        return trace.set_span_in_context(trace.INVALID_SPAN, ctx)
    return ctx


def _with_parent(ctx: Context, span_context: SpanContext) -> Context:
    ctx = set_value(DEFERRED_SAMPLING_KEY, None, ctx)
    return trace.set_span_in_context(NonRecordingSpan(span_context), ctx)


# Where OpenTelemetry keeps the baggage in a context: all members set with one new
# context instead of one per member (`set_baggage` copies the mapping every time).
_BAGGAGE_KEY = getattr(otel_baggage, "_BAGGAGE_KEY", None)


def _with_baggage(ctx: Context, members: list[tuple[str, str]]) -> Context:
    if not members:
        return ctx
    if _BAGGAGE_KEY is None:  # another OpenTelemetry API
        for key, value in members:
            ctx = otel_baggage.set_baggage(key, value, ctx)
        return ctx
    merged = dict(otel_baggage.get_all(ctx))
    merged.update(members)
    return set_value(_BAGGAGE_KEY, merged, ctx)


def _baggage_sampled(members: list[tuple[str, str]]) -> bool | None:
    for key, value in members:
        if key == "sentry-sampled":
            return {"true": True, "false": False}.get(value)
    return None


def _parse_baggage(values: Sequence[str] | None) -> list[tuple[str, str]]:
    """W3C baggage members in order, within the limits; a malformed member is skipped.

    `sentry-*` members are found wherever they sit in the header (up to a scan bound) and
    have the first claim on the limits: they are the dynamic sampling context of the
    trace's head, which is kept, never replaced by ours, however many members precede it.
    """
    if not values:
        return []
    parsed: list[tuple[str, str, int]] = []
    budget = _BAGGAGE_SCAN_BYTES
    for header in values:
        if not isinstance(header, str) or budget <= 0:
            break
        # Slicing first bounds the work a huge header costs; the member the cut falls in
        # is incomplete and goes with the rest.
        items = header[:budget].split(",")
        if len(header) > budget:
            items.pop()
        budget -= len(header) + 1
        for item in items:
            name_value = item.split(";", 1)[0]
            key, sep, value = name_value.partition("=")
            key = key.strip(_OWS)
            if not sep or not key or not _is_token(key):
                continue
            value = value.strip(_OWS)
            if _BAGGAGE_VALUE_RE.fullmatch(value) is None:
                continue
            if "%" in value:
                try:
                    value = unquote(value, errors="strict")
                except UnicodeDecodeError:
                    continue
            parsed.append((key, value, len(item.strip(_OWS))))
    return [(key, value) for key, value, _ in _within_limits(parsed)]


def _within_limits(items: Sequence[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """The `(key, value, size)` items kept within 64 members and 8192 bytes, in order.

    W3C Baggage lets a platform drop members "in any order" past its limits. `sentry-*`
    members claim room first, so Sentry's sampling context survives a crowded header;
    the other members then fill what is left, in header order.
    """
    fits = sum(cost for _, _, cost in items) + len(items) - 1 <= _BAGGAGE_MAX_BYTES
    if fits and len(items) <= _BAGGAGE_MAX_MEMBERS:
        return list(items)  # everything fits: nothing to choose
    keep = [False] * len(items)
    count = size = 0
    for sentry_pass in (True, False):
        for i, (key, _, cost) in enumerate(items):
            if keep[i] or key.startswith(_SENTRY_PREFIX) is not sentry_pass:
                continue
            extra = cost + (1 if count else 0)
            if count >= _BAGGAGE_MAX_MEMBERS or size + extra > _BAGGAGE_MAX_BYTES:
                continue
            keep[i] = True
            count += 1
            size += extra
    return [item for item, kept in zip(items, keep, strict=True) if kept]


# RFC 7230's token characters (one regex match: a loop over the characters cost a
# baggage header of five members most of its parse).
_TOKEN_RE = re.compile(r"[!#$%&'*+\-.^_`|~0-9a-zA-Z]+")


def _is_token(key: str) -> bool:
    return _TOKEN_RE.fullmatch(key) is not None


def _format_baggage(members: Iterable[tuple[str, str]]) -> str:
    items: list[tuple[str, str, int]] = []
    seen: set[str] = set()
    for key, value in members:
        if key in seen or not key or not _is_token(key):
            continue
        seen.add(key)
        part = f"{key}={quote(value, safe='')}"
        items.append((key, part, len(part)))
    return ",".join(part for _, part, _ in _within_limits(items))


def _decimal(value: float) -> str:
    return f"{value:.6f}".rstrip("0").rstrip(".") or "0"
