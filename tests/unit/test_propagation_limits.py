"""Hostile-header regressions of the composite propagator, without sockets.

Each case was first found by tests/integration/test_hostile_headers.py against the
real gateway; here it is pinned to the propagator, composed as `otel.setup` composes it
with OpenTelemetry's default `tracecontext,baggage` propagators.
"""

from __future__ import annotations

import pytest
from opentelemetry import baggage, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.context import Context
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import Getter, TextMapPropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from otel.propagation import ADOPTED_TRACE_ID_KEY, DscDefaults, TracegatePropagator, compose

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
OURS = TracegatePropagator(DscDefaults(public_key="ours", sample_rate=1.0))


def _composed() -> TextMapPropagator:
    defaults = CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    return compose(defaults, OURS)


class _ListGetter(Getter[dict[str, list[str]]]):
    def get(self, carrier: dict[str, list[str]], key: str) -> list[str] | None:
        return carrier.get(key)

    def keys(self, carrier: dict[str, list[str]]) -> list[str]:
        return list(carrier)


def _parent(ctx: Context) -> trace.SpanContext:
    return trace.get_current_span(ctx).get_span_context()


def _members(header: str) -> list[tuple[str, str]]:
    return [(k, v) for k, _, v in (m.partition("=") for m in header.split(","))]


# --- a traceparent only OpenTelemetry's laxer parser accepts ------------------------------


@pytest.mark.parametrize(
    "bad",
    [f"00-{TRACE}-{PARENT}-01\n", f"00-{TRACE}-{PARENT}-01 \t\n", f" 00-{TRACE}-{PARENT}-01\n"],
)
def test_traceparent_with_trailing_newline_restarts_the_trace(bad: str) -> None:
    # OpenTelemetry's own propagator continues it (its regex ends in `$`)...
    assert _parent(TraceContextTextMapPropagator().extract({"traceparent": bad})).is_valid
    # ...tracegate, as W3C says, ignores it, whatever ran before.
    assert not _parent(_composed().extract({"traceparent": bad})).is_valid


def test_invalid_traceparent_yields_to_sentry_trace() -> None:
    carrier = {
        "traceparent": f"00-{TRACE}-{PARENT}-01\n",
        "sentry-trace": f"{'a' * 32}-{'b' * 16}-1",
    }
    parent = _parent(_composed().extract(carrier))
    assert (f"{parent.trace_id:032x}", f"{parent.span_id:016x}") == ("a" * 32, "b" * 16)


def test_invalid_traceparent_yields_to_x_trace_id() -> None:
    carrier = {"traceparent": f"00-{TRACE}-{PARENT}-01\n", "x-trace-id": "c" * 32}
    ctx = _composed().extract(carrier)
    assert not _parent(ctx).is_valid
    assert ctx.get(ADOPTED_TRACE_ID_KEY) == int("c" * 32, 16)


def test_two_traceparent_fields_are_not_trusted_after_composition() -> None:
    # OpenTelemetry reads the first of several fields; two parents name no parent.
    carrier = {"traceparent": [f"00-{TRACE}-{PARENT}-01", f"00-{'1' * 32}-{'2' * 16}-01"]}
    ctx = _composed().extract(carrier, getter=_ListGetter())
    assert not _parent(ctx).is_valid


def test_a_parent_from_another_header_is_still_kept() -> None:
    # A b3/jaeger parent that the rejected traceparent does not name stays.
    other = trace.SpanContext(int("d" * 32, 16), int("e" * 16, 16), True)
    ctx = trace.set_span_in_context(trace.NonRecordingSpan(other), Context())
    extracted = OURS.extract({"traceparent": f"00-{TRACE}-{PARENT}-01\n"}, ctx)
    assert _parent(extracted) == other


# --- baggage limits ------------------------------------------------------------------------


def test_sentry_context_behind_a_thousand_members_is_kept() -> None:
    w3c = [f"m{i:04d}=v{i:04d}" for i in range(1000)]
    dsc = [f"sentry-trace_id={TRACE}", "sentry-public_key=upstream", "sentry-sample_rand=0.25"]
    carrier = {"traceparent": f"00-{TRACE}-{PARENT}-01", "baggage": ",".join([*w3c, *dsc])}
    ctx = _composed().extract(carrier)
    out: dict[str, str] = {}
    OURS.inject(out, ctx)
    members = _members(out["baggage"])
    assert len(members) == 64 and len(out["baggage"]) <= 8192
    sentry = {k: v for k, v in members if k.startswith("sentry-")}
    assert sentry == {
        "sentry-trace_id": TRACE,
        "sentry-public_key": "upstream",
        "sentry-sample_rand": "0.25",
        "sentry-sampled": "true",
    }
    others = [f"{k}={v}" for k, v in members if not k.startswith("sentry-")]
    assert others == w3c[:60]


def test_our_sentry_context_fits_beside_64_inbound_members() -> None:
    # OpenTelemetry's baggage propagator alone puts up to 180 members in the context.
    header = ",".join(f"m{i}=v" for i in range(150))
    ctx = _composed().extract({"sentry-trace": f"{TRACE}-{PARENT}-0", "baggage": header})
    assert len(baggage.get_all(ctx)) > 64
    out: dict[str, str] = {}
    OURS.inject(out, ctx)
    members = dict(_members(out["baggage"]))
    assert len(members) == 64
    assert members["sentry-trace_id"] == TRACE and members["sentry-sampled"] == "false"
    assert members["sentry-public_key"] == "ours"
    assert "m0" in members


def test_byte_limit_keeps_room_for_the_sentry_context() -> None:
    header = ",".join(f"m{i}={'v' * 500}" for i in range(40))  # 20 KiB
    ctx = _composed().extract({"traceparent": f"00-{TRACE}-{PARENT}-01", "baggage": header})
    out: dict[str, str] = {}
    OURS.inject(out, ctx)
    assert len(out["baggage"].encode()) <= 8192
    members = dict(_members(out["baggage"]))
    assert members["sentry-trace_id"] == TRACE
    assert all(members[f"m{i}"] == "v" * 500 for i in range(10))


def _at_the_limits() -> list[str]:
    # 64 members whose header, commas included, is exactly 8192 bytes.
    members = [f"m{i:02d}={'v' * 123}" for i in range(64)]
    members[-1] += "v"
    assert len(",".join(members)) == 8192
    return members


@pytest.mark.parametrize(
    ("members", "kept"),
    [
        (_at_the_limits(), 64),  # exactly at both limits: all of it
        ([*_at_the_limits()[:-1], _at_the_limits()[-1] + "v"], 63),  # one byte over
        ([f"m{i}=v" for i in range(65)], 64),  # one member over
    ],
)
def test_members_at_the_limits(members: list[str], kept: int) -> None:
    ctx = OURS.extract({"traceparent": f"00-{TRACE}-{PARENT}-01", "baggage": ",".join(members)})
    assert list(baggage.get_all(ctx).items()) == _members(",".join(members[:kept]))


def test_scan_bound_never_keeps_a_member_cut_in_half() -> None:
    header = ",".join(f"m{i}={'v' * 150}" for i in range(1000))  # 150 KiB
    ctx = OURS.extract({"baggage": header})
    assert all(value == "v" * 150 for value in baggage.get_all(ctx).values())


@pytest.mark.parametrize(
    "member",
    ["k=a\r\nX-Evil: 1", "k=a\nb", "k=\x00", "k=caf\xe9", 'k="q"', "k=a\\b", "k=a b"],
)
def test_malformed_baggage_values_are_skipped(member: str) -> None:
    ctx = OURS.extract({"baggage": f"a=1,{member},b=2"})
    assert dict(baggage.get_all(ctx)) == {"a": "1", "b": "2"}


def test_baggage_keys_are_tokens_not_percent_encoded() -> None:
    # W3C Baggage: key = token; decoding it could turn "%0A" into a line break.
    ctx = OURS.extract({"baggage": "k%0AX=1,v=%0D%0A"})
    assert dict(baggage.get_all(ctx)) == {"k%0AX": "1", "v": "\r\n"}
    out: dict[str, str] = {}
    OURS.inject(out, ctx)
    assert out["baggage"] == "k%0AX=1,v=%0D%0A"
