"""The composite propagator and the sampler, without sockets."""

from __future__ import annotations

from pathlib import Path

from opentelemetry import baggage, trace
from opentelemetry.context import Context, attach, detach
from opentelemetry.propagate import get_global_textmap, set_global_textmap
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

import otel
from gateway.settings import Settings
from otel.config import TelemetryConfig
from otel.propagation import (
    AdoptingIdGenerator,
    DscDefaults,
    TracegatePropagator,
    compose,
    sample_rand,
)
from otel.provider import build_sampler

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
PROPAGATOR = TracegatePropagator(DscDefaults(public_key="pk", environment="test", sample_rate=1.0))


def _span_context(carrier: dict[str, str]) -> trace.SpanContext:
    return trace.get_current_span(PROPAGATOR.extract(carrier)).get_span_context()


def _provider(**config: object) -> tuple[TracerProvider, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        sampler=build_sampler(TelemetryConfig().with_overrides(**config)),
        id_generator=AdoptingIdGenerator(),
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_traceparent_wins_over_sentry_trace_and_x_trace_id() -> None:
    carrier = {
        "traceparent": f"00-{TRACE}-{PARENT}-01",
        "sentry-trace": f"{'a' * 32}-{'b' * 16}-1",
        "x-trace-id": "11111111-2222-3333-4444-555555555555",
    }
    span_context = _span_context(carrier)
    assert f"{span_context.trace_id:032x}" == TRACE
    assert f"{span_context.span_id:016x}" == PARENT
    assert span_context.is_remote and span_context.trace_flags.sampled


def test_invalid_traceparent_falls_back_to_sentry_trace() -> None:
    carrier = {
        "traceparent": f"00-{TRACE.upper()}-{PARENT}-01",
        "sentry-trace": f"{TRACE}-{PARENT}-0",
    }
    span_context = _span_context(carrier)
    assert f"{span_context.trace_id:032x}" == TRACE
    assert not span_context.trace_flags.sampled


def test_tracestate_keeps_what_the_current_spec_keeps() -> None:
    long_key = "k" + "@" * 10 + "x" * 245  # 256 characters, '@' after the first
    carrier = {
        "traceparent": f"00-{TRACE}-{PARENT}-01",
        "tracestate": f"1vendor=a,{long_key}=b,dup=1,dup=2,bad key=c",
    }
    state = _span_context(carrier).trace_state
    assert list(state.items()) == [("1vendor", "a"), (long_key, "b"), ("dup", "1")]
    # OpenTelemetry's own parser discards this header whole.
    otel_state = (
        trace.get_current_span(TraceContextTextMapPropagator().extract(carrier))
        .get_span_context()
        .trace_state
    )
    assert len(otel_state) == 0


def test_tracestate_ignored_without_valid_traceparent() -> None:
    carrier = {"sentry-trace": f"{TRACE}-{PARENT}-1", "tracestate": "a=b"}
    assert len(_span_context(carrier).trace_state) == 0


def test_x_trace_id_is_adopted_by_the_new_root() -> None:
    provider, exporter = _provider()
    ctx = PROPAGATOR.extract({"x-trace-id": "4BF92F35-77B3-4DA6-A3CE-929D0E0E4736"})
    assert not trace.get_current_span(ctx).get_span_context().is_valid
    token = attach(ctx)
    try:
        provider.get_tracer("t").start_span("root", context=ctx).end()
    finally:
        detach(token)
    (span,) = exporter.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == TRACE
    assert span.parent is None


def test_malformed_headers_start_a_new_trace() -> None:
    for carrier in (
        {"traceparent": "00-zz-yy-01"},
        {"sentry-trace": "nonsense"},
        {"x-trace-id": "00000000-0000-0000-0000-000000000000"},
        {"traceparent": f"00-{'0' * 32}-{PARENT}-01"},
        {"baggage": "=,;;,%%%"},
    ):
        assert not _span_context(carrier).is_valid


def test_two_traceparent_headers_are_not_trusted() -> None:
    ctx = PROPAGATOR.extract(
        {"traceparent": [f"00-{TRACE}-{PARENT}-01", f"00-{'a' * 32}-{PARENT}-01"]},
        getter=_ListGetter(),
    )
    assert not trace.get_current_span(ctx).get_span_context().is_valid


class _ListGetter:
    def get(self, carrier: dict[str, list[str]], key: str) -> list[str] | None:
        return carrier.get(key)

    def keys(self, carrier: dict[str, list[str]]) -> list[str]:
        return list(carrier)


def test_inject_flags_agree_and_baggage_is_merged_not_overwritten() -> None:
    inbound = {
        "traceparent": f"00-{TRACE}-{PARENT}-00",
        "baggage": "tenant=acme,sentry-trace_id=" + "f" * 32 + ",sentry-sampled=true",
    }
    ctx = PROPAGATOR.extract(inbound)
    out: dict[str, str] = {}
    PROPAGATOR.inject(out, ctx)
    assert out["traceparent"] == f"00-{TRACE}-{PARENT}-00"
    assert out["sentry-trace"] == f"{TRACE}-{PARENT}-0"
    members = dict(item.split("=", 1) for item in out["baggage"].split(","))
    assert members["tenant"] == "acme"
    assert members["sentry-sampled"] == "false"
    # The inbound DSC named another trace: ours replaces it.
    assert members["sentry-trace_id"] == TRACE
    assert members["sentry-public_key"] == "pk"


def test_inbound_sentry_dsc_for_this_trace_is_kept() -> None:
    inbound = {
        "sentry-trace": f"{TRACE}-{PARENT}-1",
        "baggage": f"sentry-trace_id={TRACE},sentry-public_key=upstream,sentry-sample_rand=0.5",
    }
    out: dict[str, str] = {}
    PROPAGATOR.inject(out, PROPAGATOR.extract(inbound))
    members = dict(item.split("=", 1) for item in out["baggage"].split(","))
    assert members["sentry-public_key"] == "upstream"
    assert members["sentry-sample_rand"] == "0.5"
    assert members["sentry-sampled"] == "true"


def test_baggage_size_limit_is_respected() -> None:
    big = ",".join(f"k{i}={'v' * 200}" for i in range(60))
    ctx = PROPAGATOR.extract({"traceparent": f"00-{TRACE}-{PARENT}-01", "baggage": big})
    out: dict[str, str] = {}
    PROPAGATOR.inject(out, ctx)
    assert len(out["baggage"]) <= 8192
    assert "sentry-" not in big and baggage.get_baggage("k0", ctx) == "v" * 200


def test_sample_rand_agrees_with_trace_id_ratio() -> None:
    provider, exporter = _provider(sampler="traceidratio", sampler_arg=0.5)
    tracer = provider.get_tracer("t")
    for _ in range(200):
        tracer.start_span("s").end()
    sampled = {s.context.trace_id for s in exporter.get_finished_spans()}
    assert 40 < len(sampled) < 160
    assert all(sample_rand(t) < 0.5 for t in sampled)


def test_adopted_uuid4_ids_are_sampled_at_the_configured_rate() -> None:
    import uuid

    from opentelemetry.context import attach as attach_ctx
    from opentelemetry.context import detach as detach_ctx

    provider, exporter = _provider(sampler="traceidratio", sampler_arg=0.2)
    tracer = provider.get_tracer("t")
    for _ in range(500):
        ctx = PROPAGATOR.extract({"x-trace-id": str(uuid.uuid4())})
        token = attach_ctx(ctx)
        try:
            tracer.start_span("root", context=ctx).end()
        finally:
            detach_ctx(token)
    sampled = len(exporter.get_finished_spans())
    # 20% of 500; OpenTelemetry's 64-bit ratio sampler would keep none of them.
    assert 60 < sampled < 140, sampled


def test_untrusted_inbound_flag_is_not_obeyed() -> None:
    provider, exporter = _provider(sampler="parentbased_always_off", honour_inbound_sampled=False)
    ctx = PROPAGATOR.extract({"traceparent": f"00-{TRACE}-{PARENT}-01"})
    provider.get_tracer("t").start_span("s", context=ctx).end()
    assert exporter.get_finished_spans() == ()
    provider, exporter = _provider(sampler="parentbased_always_off")
    provider.get_tracer("t").start_span("s", context=ctx).end()
    assert len(exporter.get_finished_spans()) == 1


def test_deferred_sentry_trace_lets_the_root_sampler_decide() -> None:
    provider, exporter = _provider(sampler="parentbased_always_on")
    ctx = PROPAGATOR.extract({"sentry-trace": f"{TRACE}-{PARENT}"})
    assert not trace.get_current_span(ctx).get_span_context().trace_flags.sampled
    provider.get_tracer("t").start_span("s", context=ctx).end()
    (span,) = exporter.get_finished_spans()
    assert f"{span.context.trace_id:032x}" == TRACE


def test_compose_adds_to_the_configured_propagators() -> None:
    current = get_global_textmap()
    composed = compose(current, PROPAGATOR)
    assert isinstance(composed, CompositePropagator)
    names = [type(p).__name__ for p in composed._propagators]
    assert names[-1] == "TracegatePropagator"
    assert "TraceContextTextMapPropagator" in names
    again = compose(composed, TracegatePropagator())
    assert [type(p).__name__ for p in again._propagators] == names


def test_another_propagators_parent_is_kept_without_traceparent() -> None:
    other = trace.SpanContext(int(TRACE, 16), int(PARENT, 16), True)
    ctx = trace.set_span_in_context(trace.NonRecordingSpan(other), Context())
    extracted = PROPAGATOR.extract({"sentry-trace": f"{'a' * 32}-{'b' * 16}-1"}, ctx)
    assert trace.get_current_span(extracted).get_span_context() == other


def test_setup_composes_the_propagators_its_settings_name(tmp_path: Path) -> None:
    # From a TOML file, which OpenTelemetry itself never reads: sentry-sdk's propagator
    # (an `opentelemetry_propagator` entry point) joins, tracegate's comes last.
    toml = tmp_path / "tracegate.toml"
    toml.write_text('OTEL_PROPAGATORS = ["tracecontext", "sentry"]\nOTEL_SDK_DISABLED = true\n')
    before = get_global_textmap()
    try:
        for propagators, expected in [
            (None, ["TraceContextTextMapPropagator", "SentryPropagator"]),
            ("none", []),
        ]:
            environ = {"TRACEGATE_CONFIG": str(toml)}
            if propagators is not None:
                environ["OTEL_PROPAGATORS"] = propagators
            telemetry = otel.setup(Settings.from_env(environ).telemetry)
            try:
                names = [type(p).__name__ for p in get_global_textmap()._propagators]
                assert names == [*expected, "TracegatePropagator"]
            finally:
                telemetry.shutdown()
    finally:
        set_global_textmap(before)
