"""The in-process cost of a span: the OpenTelemetry SDK alone, with sentry-sdk's
SentrySpanProcessor, and with tracegate's SentryBridge.

`python -m bench.spans [--quick] [--variants sdk,tracegate,...]` prints Markdown
tables; `run(quick)` returns their lines (progress goes to stderr).

Every variant runs in a fresh child process (sentry-sdk's client, its span processor
and OpenTelemetry's globals are per process) on the same `TracerProvider`, with the
same `BatchSpanProcessor` and real OTLP/HTTP exporter posting to a local
`OTLPReceiver`; the Sentry variants' real HTTP transport posts to a local envelope
receiver. The receivers run in this (the parent) process, so what they do to decode
costs the children nothing. Variants:

- sdk             TracerProvider + BatchSpanProcessor(OTLPSpanExporter): the baseline;
- sentry-otel     sdk + sentry-sdk's SentrySpanProcessor, sentry_sdk.init(dsn=...,
                  instrumenter="otel", traces_sample_rate=1.0): each local root span
                  becomes a transaction, its children Sentry spans;
- tracegate       sdk + tracegate's SentryBridge (`init_sentry`, transactions to the
                  same receiver); each trace runs in a unit of work (`open_unit`), as
                  a request does;
- tracegate-otlp  sdk + the bridge with TRACEGATE_SENTRY_TRACES=otlp: no transaction
                  envelopes; a second batch processor exports the spans to Sentry's
                  OTLP endpoint (the receiver answers on that path too).

Two shapes: 1-span traces (a SERVER span with nine HTTP attributes, each trace a
transaction) and 10-span trees (that root and nine INTERNAL children with two
attributes each).

What is counted: the child's process CPU time (`time.process_time`: every thread —
the calling one, the batch processors' export threads, sentry-sdk's transport worker)
from the first span until both flushes returned, i.e. until the receivers had
answered for everything. The Sentry variants flush Sentry every 50 traces: its
transport queue holds 100 envelopes, and a producer that outruns it loses
transactions, which is not speed. Split out of that total, from CPU clocks of the
threads doing it: what the calling thread spent (`inline`, what a request pays), what
sentry-sdk's transport spent turning envelopes into request bodies (JSON framing and
gzip, `_prepare_envelope`) and what it spent in HTTP requests (`_send_request`, and
for tracegate the pipelined batches, `Origin.post_many`; for tracegate-otlp, the
Sentry exporter's POSTs). The rest of the transport's share is its
queue hand-off and per-envelope logging. Figures above `sdk` are differences of
medians over the rounds, which run the variants interleaved (A B C A B C).

The receivers answer in HTTP/1.1 with TCP_NODELAY, keeping connections open as Sentry
and collectors do (the test peers speak HTTP/1.0 and close after every answer, which
would add a TCP connect to every envelope).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("sdk", "sentry-otel", "tracegate", "tracegate-otlp")
SHAPES = (1, 10)
_CHUNK = 50  # traces between Sentry flushes: below the transport's queue of 100
_CLOCKS = ("cpu_s", "inline_s", "prepare_s", "send_s")

_ROOT_ATTRIBUTES: dict[str, str | int] = {
    "http.request.method": "GET",
    "url.scheme": "http",
    "url.path": "/orders/7",
    "http.route": "/orders/<id>",
    "server.address": "127.0.0.1",
    "server.port": 8080,
    "client.address": "127.0.0.1",
    "network.protocol.version": "1.1",
    "user_agent.original": "bench/1.0",
}


# -- the child: one variant, both shapes ------------------------------------------------


@dataclass
class _Meter:
    """CPU time the threads doing each stage spent in it."""

    spent: dict[str, float] = field(default_factory=lambda: {"prepare_s": 0.0, "send_s": 0.0})

    def wrap(self, stage: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return method(*args, **kwargs)
            finally:
                self.spent[stage] += time.thread_time() - started

        return timed


def _child(variant: str, otlp_url: str, dsn: str, traces: dict[int, int], warmup: int) -> None:
    _pin_cpu(child=True)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import SpanKind

    meter = _Meter()
    provider = TracerProvider(resource=Resource.create({"service.name": "bench"}))
    provider.add_span_processor(_batch(OTLPSpanExporter(endpoint=otlp_url)))
    unit: Callable[[], Any] = _no_unit
    sentry = variant != "sdk"
    if sentry:
        from sentry_sdk.transport import BaseHttpTransport, HttpTransportCore

        core: Any = HttpTransportCore
        core._prepare_envelope = meter.wrap("prepare_s", core._prepare_envelope)
        http: Any = BaseHttpTransport
        http._send_request = meter.wrap("send_s", http._send_request)
        if variant != "sentry-otel":  # tracegate's transport also posts batches
            from otel.http1 import Origin

            origin: Any = Origin
            origin.post_many = meter.wrap("send_s", origin.post_many)
    if variant == "sentry-otel":
        import sentry_sdk
        from sentry_sdk.integrations.opentelemetry import SentrySpanProcessor

        sentry_sdk.init(dsn=dsn, instrumenter="otel", traces_sample_rate=1.0)
        provider.add_span_processor(SentrySpanProcessor())
    elif variant in ("tracegate", "tracegate-otlp"):
        from otel.config import TelemetryConfig
        from otel.counters import Counters
        from otel.propagation import DscDefaults, TracegatePropagator
        from otel.sentry import SentryBridge, init_sentry, open_unit, unpin

        otlp_mode = variant == "tracegate-otlp"
        overrides = {"sentry_traces": "otlp"} if otlp_mode else {}
        config = TelemetryConfig(service_name="bench", sentry_dsn=dsn, **overrides)
        counters = Counters()
        propagator = TracegatePropagator(
            DscDefaults(public_key="public", environment="development", release="", sample_rate=1),
            counters,
        )
        bridge = SentryBridge(config, propagator)
        init_sentry(config, bridge, counters=counters)
        if otlp_mode:
            from otel.provider import build_sentry_exporter

            sentry_exporter = build_sentry_exporter(config)
            assert sentry_exporter is not None
            session: Any = sentry_exporter._session
            session.post = meter.wrap("send_s", session.post)
            provider.add_span_processor(_batch(sentry_exporter))
        provider.add_span_processor(bridge)

        @contextmanager
        def tracegate_unit() -> Iterator[None]:
            token = open_unit()
            try:
                yield
            finally:
                unpin(token)

        unit = tracegate_unit

    tracer = provider.get_tracer("bench")

    def flush_sentry() -> None:
        if sentry:
            import sentry_sdk

            sentry_sdk.get_client().flush(timeout=30)

    def make(count: int, shape: int) -> None:
        for i in range(count):
            with (
                unit(),
                tracer.start_as_current_span(
                    "GET /orders/<id>", kind=SpanKind.SERVER, attributes=_ROOT_ATTRIBUTES
                ) as root,
            ):
                for j in range(shape - 1):
                    with tracer.start_as_current_span(
                        "load item", attributes={"code.function": "load", "app.item": j}
                    ):
                        pass
                root.set_attribute("http.response.status_code", 200)
            if (i + 1) % _CHUNK == 0:
                flush_sentry()

    def flush_all() -> None:
        provider.force_flush(60_000)
        flush_sentry()

    results: dict[str, Any] = {"made": {"traces": 0, "spans": 0}}
    for shape in SHAPES:
        make(warmup, shape)
        flush_all()
        count = traces[shape]
        before = dict(meter.spent)
        cpu, inline = time.process_time(), time.thread_time()
        make(count, shape)
        flush_all()
        results[str(shape)] = {
            "traces": count,
            "cpu_s": time.process_time() - cpu,
            "inline_s": time.thread_time() - inline,
            **{stage: meter.spent[stage] - before[stage] for stage in before},
        }
        results["made"]["traces"] += warmup + count
        results["made"]["spans"] += (warmup + count) * shape
    provider.shutdown()
    print(json.dumps(results))


def _pin_cpu(child: bool) -> None:
    """The child on the last CPU, the parent (the receivers) on the others.

    A child's threads then take turns on one CPU instead of slowing each other down
    on two (shared caches, or the two halves of one hyper-threaded core): its CPU time
    is the work's, not the interference's, whatever else the machine runs.
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        return
    os.sched_setaffinity(0, {cpus[-1]} if child else set(cpus[:-1]))


def _batch(exporter: Any) -> Any:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # A queue that holds a whole run: the SDK never drops a span here, so every variant
    # exports everything it made and the receiver's count proves it.
    return BatchSpanProcessor(
        exporter, max_queue_size=1 << 20, max_export_batch_size=512, schedule_delay_millis=200
    )


def _no_unit() -> Any:
    return _NoUnit()


class _NoUnit:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# -- the parent: receivers, rounds, the tables -------------------------------------------


def _sentry_receiver() -> Any:
    """An envelope receiver that also takes OTLP/HTTP at Sentry's OTLP traces path."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    from tests.peers.base import decode_body
    from tests.peers.envelope import EnvelopeReceiver
    from tests.peers.spans import SpanInbox, spans_from_request

    otlp_path = re.compile(r"^/api/[^/]+/integration/otlp/v1/traces/?$")

    class SentryReceiver(EnvelopeReceiver):
        def __init__(self) -> None:
            super().__init__()
            self.otlp = SpanInbox()

        def _handle(
            self, path: str, headers: dict[str, str], body: bytes
        ) -> tuple[int, str, bytes]:
            if not otlp_path.match(path):
                return super()._handle(path, headers, body)
            request = ExportTraceServiceRequest()
            request.ParseFromString(decode_body(body, headers.get("content-encoding")))
            self.otlp._add(spans_from_request(request))
            return 200, "application/x-protobuf", ExportTraceServiceResponse().SerializeToString()

    return SentryReceiver()


def _run_child(
    variant: str, otlp_url: str, dsn: str, traces: dict[int, int], warmup: int
) -> dict[str, Any]:
    args = [
        sys.executable,
        "-m",
        "bench.spans",
        "--child",
        variant,
        "--otlp",
        otlp_url,
        "--dsn",
        dsn,
        "--traces",
        json.dumps(traces),
        "--warmup",
        str(warmup),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in list(env):  # the child's settings are its arguments, nothing else
        if name.startswith(("OTEL_", "SENTRY_", "TRACEGATE_")):
            del env[name]
    done = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"bench.spans child {variant} failed:\n{done.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _settle(read: Callable[[], int], timeout: float = 5.0) -> int:
    """The receiver's count once it stops growing (the child flushed before exiting)."""
    deadline = time.monotonic() + timeout
    last = read()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = read()
        if now == last:
            return now
        last = now
    return last


Samples = dict[str, dict[int, list[dict[str, float]]]]


def run(quick: bool, variants: tuple[str, ...] = VARIANTS) -> list[str]:
    from bench.receivers import keep_alive
    from tests.peers.otlp import OTLPReceiver

    rounds = 1 if quick else 5
    traces = {1: 800, 10: 200} if quick else {1: 3000, 10: 800}
    warmup = 100 if quick else 300
    samples: Samples = {v: {s: [] for s in SHAPES} for v in variants}
    _pin_cpu(child=False)
    arrived: dict[str, dict[str, int]] = {}
    with OTLPReceiver() as otlp, _sentry_receiver() as sentry:
        keep_alive(otlp)
        keep_alive(sentry)
        for round_index in range(rounds):
            for variant in variants:
                print(f"bench.spans: round {round_index + 1}/{rounds} {variant}", file=sys.stderr)
                otlp.clear()
                sentry.clear()
                sentry.otlp.clear()
                result = _run_child(variant, otlp.traces_endpoint, sentry.dsn, traces, warmup)
                for shape in SHAPES:
                    samples[variant][shape].append(result[str(shape)])
                got = {
                    **result["made"],
                    "otlp_spans": _settle(lambda: len(otlp.spans)),
                    "transactions": _settle(lambda: len(sentry.transactions())),
                    "transaction_spans": sum(
                        1 + len(t.get("spans") or []) for t in sentry.transactions()
                    ),
                    "sentry_otlp_spans": _settle(lambda: len(sentry.otlp.spans)),
                }
                worst = arrived.setdefault(variant, got)
                for key, value in got.items():  # the worst round is the one shown
                    worst[key] = min(worst[key], value)
    return _report(samples, arrived, quick, rounds, traces, warmup)


def _per_trace(samples: Samples, variant: str, shape: int, clock: str) -> float:
    """Median µs per trace of one clock."""
    return statistics.median(v[clock] / v["traces"] for v in samples[variant][shape]) * 1e6


def _report(
    samples: Samples,
    arrived: dict[str, dict[str, int]],
    quick: bool,
    rounds: int,
    traces: dict[int, int],
    warmup: int,
) -> list[str]:
    variants = tuple(samples)
    us = {
        (v, s, c): _per_trace(samples, v, s, c) for v in variants for s in SHAPES for c in _CLOCKS
    }

    def transaction(v: str, clock: str) -> float:
        """µs per 1-span trace above the SDK alone: what a transaction adds."""
        return us[v, 1, clock] - us["sdk", 1, clock]

    def child(v: str, clock: str) -> float:
        """µs per child span above the SDK alone, from the 10-span trees."""
        return (us[v, 10, clock] - us["sdk", 10, clock] - transaction(v, clock)) / 9

    def stages(cost: Callable[[str, str], float], v: str) -> list[str]:
        build = cost(v, "inline_s") + cost(v, "prepare_s")
        return [
            f"{cost(v, 'cpu_s'):.1f}",
            f"{cost(v, 'inline_s'):.1f}",
            f"{cost(v, 'prepare_s'):.1f}",
            f"{build:.1f}",
            f"{cost(v, 'send_s'):.1f}",
        ]

    def ratio(cost: Callable[[str, str], float], v: str, clocks: tuple[str, ...]) -> str:
        if "tracegate" not in variants or v == "tracegate":
            return "—"
        mine = sum(cost("tracegate", c) for c in clocks)
        theirs = sum(cost(v, c) for c in clocks)
        return f"{theirs / mine:.1f}x" if mine > 0 else "—"

    lines = [
        f"### Per-span cost in-process ({'quick' if quick else 'full'} run)",
        "",
        "µs of CPU, every thread counted, until the receivers had everything. Medians of "
        f"{rounds} round(s) of {traces[1]} 1-span traces and {traces[10]} 10-span trees "
        f"after {warmup} warm-up traces of each shape.",
        "",
        "| variant | µs per span, 1-span traces | µs per span, 10-span trees |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| {v} | {us[v, 1, 'cpu_s']:.1f} | {us[v, 10, 'cpu_s'] / 10:.1f} |" for v in variants
    ]
    header = (
        "| variant | all | inline (calling thread) | envelope body + gzip (transport) "
        "| building and serialising (inline + body) | HTTP send | x tracegate, all "
        "| x tracegate, building and serialising |"
    )
    for title, cost in (
        ("µs per transaction above sdk (1-span traces)", transaction),
        ("µs per child span above sdk (10-span trees, less a 1-span trace, / 9)", child),
    ):
        lines += ["", f"**{title}**", "", header, "|---|" + "---:|" * 7]
        for v in variants:
            if v == "sdk":
                continue
            lines.append(
                f"| {v} | "
                + " | ".join(stages(cost, v))
                + f" | {ratio(cost, v, ('cpu_s',))} | {ratio(cost, v, ('inline_s', 'prepare_s'))} |"
            )
    lines += [
        "",
        '"all" less the three stages is sentry-sdk\'s transport hand-off (its queue, '
        "thread wake-ups, per-envelope debug logging) and, for tracegate-otlp, the second "
        "batch processor's encoding. \"x tracegate\": that variant's extra cost over "
        "tracegate's (envelope mode).",
        "",
        "What the receivers got (the worst round):",
        "",
        "| variant | traces made | spans made | OTLP spans | Sentry transactions "
        "| spans in transactions | spans at Sentry's OTLP endpoint |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v in variants:
        a = arrived[v]
        lines.append(
            f"| {v} | {a['traces']} | {a['spans']} | {a['otlp_spans']} | {a['transactions']} "
            f"| {a['transaction_spans']} | {a['sentry_otlp_spans']} |"
        )
    names = ("opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http", "sentry-sdk")
    command = "python -m bench.spans" + (" --quick" if quick else "")
    if variants != VARIANTS:
        command += " --variants " + ",".join(variants)
    lines += [
        "",
        f"`{command}` on {platform.system()} {platform.machine()} with {os.cpu_count()} CPUs; "
        + ", ".join(f"{name} {version(name)}" for name in names)
        + f", Python {platform.python_version()}; "
        + datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        + ".",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.spans")
    parser.add_argument("--quick", action="store_true", help="a few seconds, one round")
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help="comma-separated, of: " + ", ".join(VARIANTS)
    )
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--otlp", help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--traces", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        traces = {int(k): int(v) for k, v in json.loads(args.traces).items()}
        _child(args.child, args.otlp, args.dsn, traces, args.warmup)
        return
    variants = tuple(v for v in args.variants.split(",") if v)
    if set(variants) - set(VARIANTS) or "sdk" not in variants:
        parser.error(f"--variants: needs sdk, knows {', '.join(VARIANTS)}")
    print("\n".join(run(args.quick, variants)))


if __name__ == "__main__":
    main()
