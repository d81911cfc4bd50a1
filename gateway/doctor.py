"""`tracegate doctor`: check a deployment's configuration, then prove one trace end to end.

The configuration checks read the same settings the gateway and workers read. The live
probe sends a request with a fresh `traceparent` to a running gateway, enqueues a probe
job and triggers a probe error, then reads the local trace store to see whether the
server span, the job's spans and the Sentry events all carry that trace id; the OTLP
row exports a probe span with that id to the configured collector. Each failed row
names the likely cause and the fix, after the four classic cases: no trace id at the
edge, context not carried, not visible in Sentry, overhead.
"""

from __future__ import annotations

import json
import re
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import redis

from gateway import redisconn
from gateway.embedded import embedded_url
from gateway.progress import wait_until
from gateway.settings import Settings
from otel import ids
from otel.rq import TRACED_FIELD

__all__ = ["Check", "run_doctor"]

OK, WARN, FAIL = "ok", "warn", "FAIL"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def _http(
    method: str, url: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        request.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            raw = response.read()
            status, got = response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        raw, status, got = error.read(), error.code, dict(error.headers)
    try:
        return status, got, json.loads(raw) if raw else None
    except ValueError:
        return status, got, None


# -- configuration ------------------------------------------------------------------


def config_checks(settings: Settings) -> list[Check]:
    telemetry = settings.telemetry
    checks = []
    if telemetry.sentry_dsn:
        host = urlsplit(telemetry.sentry_dsn).hostname
        checks.append(Check("Sentry DSN", OK, f"events go to {host}"))
    else:
        checks.append(
            Check(
                "Sentry DSN",
                WARN,
                "no DSN: events stay in the local trace store",
                "set SENTRY_DSN to send them to Sentry",
            )
        )
    checks.append(_otlp_check(settings))
    checks.append(_redis_check(settings))
    checks.append(_propagator_check(settings.telemetry.propagators))
    sampler = telemetry.sampler
    if sampler.endswith("always_off") or (
        sampler.endswith("traceidratio") and not telemetry.sampler_arg
    ):
        checks.append(
            Check(
                "Sampler",
                WARN,
                f"{sampler}: no trace is sampled",
                "set OTEL_TRACES_SAMPLER=parentbased_traceidratio and a ratio > 0",
            )
        )
    else:
        arg = f" ({telemetry.sampler_arg})" if "ratio" in sampler else ""
        checks.append(Check("Sampler", OK, f"{sampler}{arg}, one decision for OTLP and Sentry"))
    checks.append(_workers_check(settings))
    return checks


def _otlp_check(settings: Settings) -> Check:
    telemetry = settings.telemetry
    if not telemetry.otlp_enabled:
        return Check(
            "OTLP endpoint",
            WARN,
            "not configured: spans stay in the local store",
            "set OTEL_EXPORTER_OTLP_ENDPOINT to your collector",
        )
    url = telemetry.otlp_url()
    if telemetry.otlp_protocol == "grpc":
        return Check("OTLP endpoint", OK, f"grpc {url} (checked by the live probe)")
    try:
        status, _, _ = _http("POST", url, headers={"content-type": "application/x-protobuf"})
    except OSError as error:
        return Check(
            "OTLP endpoint",
            FAIL,
            f"{url} unreachable ({type(error).__name__})",
            "start the collector or fix OTEL_EXPORTER_OTLP_ENDPOINT",
        )
    if status >= 500 or status == 404:
        return Check(
            "OTLP endpoint",
            FAIL,
            f"{url} answered {status}",
            "point OTEL_EXPORTER_OTLP_ENDPOINT at an OTLP/HTTP receiver",
        )
    return Check("OTLP endpoint", OK, f"{url} answers")


def _redis_check(settings: Settings) -> Check:
    wanted = settings.telemetry.redis_wait_replicas
    try:
        connection = redisconn.connect(settings.redis)
        connection.ping()
        replicas = int(connection.info("replication").get("connected_slaves", 0)) if wanted else 0
    except (redis.RedisError, OSError) as error:
        return Check(
            "Redis",
            FAIL,
            f"unreachable ({type(error).__name__})",
            "start Redis or fix REDIS_URL (tracegate up embeds one)",
        )
    where = urlsplit(settings.redis).netloc.rpartition("@")[2]
    if wanted and replicas < wanted:
        return Check(
            "Redis",
            FAIL,
            f"TRACEGATE_REDIS_WAIT_REPLICAS={wanted} but the primary has {replicas} "
            "replica(s): every POST /v1/jobs answers 503 and every work horse waits "
            "TRACEGATE_RQ_FLUSH_TIMEOUT_S",
            "add replicas or lower TRACEGATE_REDIS_WAIT_REPLICAS",
        )
    if wanted:
        return Check("Redis", OK, f"{where}, {replicas} replica(s) connected, {wanted} awaited")
    return Check("Redis", OK, where)


def _propagator_check(configured: str) -> Check:
    # A name that is not installed stops every tracegate command at start (exit 2), so
    # here the configured list is only shown.
    names = [n.strip() for n in (configured or "tracecontext,baggage").split(",") if n.strip()]
    return Check("Propagators", OK, " + ".join([*names, "tracegate"]))


def _workers_check(settings: Settings) -> Check:
    from rq import Worker

    try:
        connection = redisconn.connect(settings.redis)
        workers = Worker.all(connection=connection)
        marks = [connection.hget(w.key, TRACED_FIELD) for w in workers]
    except (redis.RedisError, OSError):
        return Check("RQ workers", FAIL, "cannot list workers (Redis unreachable)", "fix REDIS_URL")
    if not workers:
        return Check(
            "RQ workers",
            FAIL,
            "no worker is running",
            "start one: tracegate worker (or rq worker -w otel.rq.TracedWorker)",
        )
    plain = [w.name for w, mark in zip(workers, marks, strict=True) if not mark]
    if plain:
        return Check(
            "RQ workers",
            FAIL,
            f"{len(plain)} of {len(workers)} not traced",
            "run them with -w otel.rq.TracedWorker -j otel.rq.TracedJob",
        )
    return Check("RQ workers", OK, f"{len(workers)} running, all with traced classes")


# -- live probe -----------------------------------------------------------------------


def probe_checks(settings: Settings, url: str, out: TextIO, wait_s: float = 15.0) -> list[Check]:
    checks: list[Check] = []
    if not url.startswith(("http://", "https://")):
        return [
            Check("Gateway", FAIL, f"{url!r} is not an http(s):// URL", "pass --url http://...")
        ]
    try:
        _probe(settings, url, out, wait_s, checks)
    except OSError as error:  # the gateway went away in the middle of the probe
        checks.append(
            Check(
                "Gateway",
                FAIL,
                f"stopped answering during the probe ({type(error).__name__})",
                "check the gateway's logs; is it restarting?",
            )
        )
    return checks


def _probe(settings: Settings, url: str, out: TextIO, wait_s: float, checks: list[Check]) -> None:
    trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
    headers = {"traceparent": f"00-{trace_id}-{parent}-01"}
    auth = {"Authorization": f"Bearer {settings.api_keys[0]}"} if settings.api_keys else {}
    probe_started_ms = time.time() * 1000
    try:
        started = time.perf_counter()
        status, got, _ = _http("GET", url + "/example", headers=headers)
        traced_ms = (time.perf_counter() - started) * 1000
        started = time.perf_counter()
        _http("GET", url + "/healthz")
        plain_ms = (time.perf_counter() - started) * 1000
    except OSError as error:
        checks.append(
            Check(
                "Gateway",
                FAIL,
                f"{url} unreachable ({type(error).__name__})",
                "start it (tracegate up / tracegate serve) or pass --url",
            )
        )
        return
    if status == 404:
        checks.append(
            Check(
                "Gateway",
                FAIL,
                "probe route /example is off",
                "enable TRACEGATE_DEMO_ROUTES=1 for the probe",
            )
        )
        return
    echoed = ids.parse_x_trace_id(got.get("X-Trace-ID") or got.get("x-trace-id"))
    if echoed != int(trace_id, 16):
        checks.append(
            Check(
                "Trace id at the edge",
                FAIL,
                "the response does not carry the probe's trace id",
                "the inbound traceparent is dropped: a proxy strips it, or "
                "OTEL_PROPAGATORS/otel.setup() is missing",
            )
        )
    else:
        checks.append(Check("Trace id at the edge", OK, f"continued {trace_id}"))
    job_status, _, job = _http(
        "POST", url + "/v1/jobs", {"task": "echo", "args": ["doctor"]}, {**headers, **auth}
    )
    _http("GET", url + "/example/error", headers=headers)
    store: dict[str, Any] = {}

    def fetch() -> dict[str, Any]:
        status, _, body = _http("GET", f"{url}/v1/traces/{trace_id}", headers=auth)
        return body if status == 200 and isinstance(body, dict) else {}

    def has(kinds: set[str], events: int = 0) -> Callable[[], bool]:
        def ready() -> bool:
            store.update(fetch())
            found = {s.get("kind") for s in store.get("spans", [])}
            return kinds <= found and len(store.get("sentry_events", [])) >= events

        return ready

    if wait_until(has({"SERVER"}), out, "the server span", wait_s):
        server = next(s for s in store["spans"] if s["kind"] == "SERVER")
        ok = server["parent_span_id"] == parent
        checks.append(
            Check(
                "Server span",
                OK if ok else FAIL,
                f"{server['name']} in trace {trace_id[:8]}…",
                "" if ok else "the server span is not a child of the caller",
            )
        )
    else:
        checks.append(
            Check(
                "Server span",
                FAIL,
                "not in the local trace store",
                "spans are not recorded: check TRACEGATE_STORE and Redis",
            )
        )
    if job_status != 202:
        checks.append(
            Check(
                "Job spans",
                FAIL,
                f"probe job refused ({job_status})",
                "enable TRACEGATE_DEMO_TASKS=1 for the probe",
            )
        )
    elif wait_until(has({"PRODUCER", "CONSUMER"}), out, "the job's spans", wait_s):
        consumer = next(s for s in store["spans"] if s["kind"] == "CONSUMER")
        checks.append(Check("Job spans", OK, f"{consumer['name']} by {consumer['service']}"))
    else:
        produced = any(s["kind"] == "PRODUCER" for s in store.get("spans", []))
        checks.append(
            Check(
                "Job spans",
                FAIL,
                "the worker's span is missing" if produced else "no producer span",
                "context not carried: run workers with -w otel.rq.TracedWorker "
                "-j otel.rq.TracedJob (tracegate worker does)"
                if produced
                else "enqueue through otel.rq.TracedQueue",
            )
        )
    del job
    if wait_until(has(set(), events=2), out, "the Sentry events", wait_s):
        titles = ", ".join(e["title"][:24] for e in store["sentry_events"][:2])
        where = "sent to Sentry" if settings.telemetry.sentry_dsn else "kept locally"
        checks.append(Check("Sentry events", OK, f"{titles} ({where})"))
        checks.append(_sentry_tracing_check(url))
    else:
        checks.append(
            Check(
                "Sentry events",
                FAIL,
                "the probe's message and error are missing",
                "not visible in Sentry: the gateway's Sentry setup is off or "
                "failing; check SENTRY_DSN and the gateway's logs",
            )
        )
        elsewhere = _events_in_other_traces(url, auth, trace_id, probe_started_ms)
        if elsewhere:
            checks.append(
                Check(
                    "Sentry tracing",
                    FAIL,
                    f"the probe's events went to trace {elsewhere[:8]}…",
                    "sentry-sdk's own tracing is on beside OpenTelemetry: remove "
                    "traces_sample_rate / traces_sampler / enable_tracing",
                )
            )
    checks.append(_otlp_probe(settings, trace_id))
    overhead = traced_ms - plain_ms
    checks.append(
        Check(
            "Overhead",
            OK if overhead < 250 else WARN,
            f"traced request {traced_ms:.0f} ms, health check {plain_ms:.0f} ms",
            ""
            if overhead < 250
            else "overhead: lower OTEL_TRACES_SAMPLER_ARG or check the collector's latency",
        )
    )
    checks.append(_losses_check(url))


_LOSS_FIXES = {
    "spans_dropped": "the collector (or the trace store) is unreachable or slow: check "
    "OTEL_EXPORTER_OTLP_ENDPOINT; a larger OTEL_BSP_MAX_QUEUE_SIZE rides out bursts",
    "events_dropped": "Sentry is unreachable, rate limiting or failing: check SENTRY_DSN "
    "and the project's quota",
    "flush_deadline_missed": "exports outlast their deadline: check the collector's and "
    "Sentry's latency, or raise TRACEGATE_RQ_FLUSH_TIMEOUT_S",
}


def _sentry_tracing_check(url: str) -> Check:
    try:
        _, _, ready = _http("GET", url + "/readyz")
        state = (ready or {}).get("checks", {}).get("sentry_tracing")
    except (OSError, AttributeError):
        state = None
    if state == "on":
        return Check(
            "Sentry tracing",
            FAIL,
            "sentry-sdk's own tracing is on in the gateway",
            "a second trace beside OpenTelemetry's: remove traces_sample_rate / "
            "traces_sampler / enable_tracing from your sentry_sdk.init",
        )
    if state is None:
        return Check("Sentry tracing", WARN, "the gateway's /readyz does not tell")
    return Check("Sentry tracing", OK, "off: the events carry the probe's trace id")


def _losses_check(url: str) -> Check:
    """What every process counted as lost, from `/metrics` (see `otel.counters`)."""
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
            text = response.read().decode()
    except (OSError, ValueError) as error:
        return Check("Losses", WARN, f"/metrics unreadable ({type(error).__name__})")
    totals: dict[str, int] = {}
    for line in text.splitlines():
        found = re.match(r"tracegate_(\w+)_total(?:\{.*\})? (\d+)$", line)
        if found:
            totals[found[1]] = totals.get(found[1], 0) + int(found[2])
    lost = {name: n for name, n in totals.items() if n and name in _LOSS_FIXES}
    invalid = totals.get("inbound_headers_invalid", 0)
    note = f"; {invalid} invalid inbound trace headers" if invalid else ""
    if not lost:
        return Check("Losses", OK, "no spans or events lost since the processes started" + note)
    detail = ", ".join(f"{name.replace('_', ' ')}: {n}" for name, n in lost.items())
    return Check("Losses", WARN, detail + note, "; ".join(_LOSS_FIXES[name] for name in lost))


def _events_in_other_traces(
    url: str, auth: dict[str, str], trace_id: str, since_ms: float
) -> str | None:
    """A trace other than the probe's that got Sentry events during the probe."""
    status, _, body = _http("GET", f"{url}/v1/traces?limit=20", headers=auth)
    if status != 200 or not isinstance(body, dict):
        return None
    for found in body.get("traces", []):
        if (
            found["trace_id"] != trace_id
            and found["event_count"]
            and found["updated_ms"] >= since_ms
        ):
            return str(found["trace_id"])
    return None


def _otlp_probe(settings: Settings, trace_id: str) -> Check:
    telemetry = settings.telemetry
    if not telemetry.otlp_enabled:
        return Check(
            "OTLP export", WARN, "no collector configured", "set OTEL_EXPORTER_OTLP_ENDPOINT"
        )
    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExportResult
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON

    from otel.provider import build_exporter

    exporter = build_exporter(telemetry)
    if exporter is None:
        return Check(
            "OTLP export", WARN, "no collector configured", "set OTEL_EXPORTER_OTLP_ENDPOINT"
        )
    parent = trace.SpanContext(
        int(trace_id, 16),
        int(secrets.token_hex(8), 16),
        is_remote=True,
        trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
    )
    ctx = trace.set_span_in_context(trace.NonRecordingSpan(parent))
    # Its own provider that samples everything: the environment's sampler has no say.
    provider = TracerProvider(sampler=ALWAYS_ON)
    span = provider.get_tracer("tracegate.doctor").start_span("doctor probe", context=ctx)
    span.end()
    if not isinstance(span, ReadableSpan):
        return Check("OTLP export", FAIL, "could not build a probe span")
    results = [exporter.export([span])]
    exporter.shutdown()
    if results and results[0] is SpanExportResult.SUCCESS:
        return Check("OTLP export", OK, f"collector accepted a span of trace {trace_id[:8]}…")
    return Check(
        "OTLP export",
        FAIL,
        "the collector refused the probe span",
        "check OTEL_EXPORTER_OTLP_ENDPOINT / _HEADERS (auth)",
    )


# -- output ---------------------------------------------------------------------------


def _table(checks: list[Check], out: TextIO) -> None:
    width = max(len(c.name) for c in checks)
    for check in checks:
        mark = {OK: "ok  ", WARN: "warn", FAIL: "FAIL"}[check.status]
        detail = (
            check.detail
            if len(check.detail) <= 78 - width - 8
            else check.detail[: 78 - width - 9] + "…"
        )
        print(f"  {mark}  {check.name:<{width}}  {detail}", file=out)
        if check.fix and check.status != OK:
            for line in _wrap(f"fix: {check.fix}", 80 - width - 10):
                print(f"        {'':<{width}}  {line}", file=out)


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return [*lines, line] if line else lines


def run_doctor(
    settings: Settings, url: str, as_json: bool, wait_s: float = 15.0, out: TextIO = sys.stdout
) -> int:
    import otel

    if not settings.redis_url:  # `tracegate up` in this folder: its embedded Redis
        found = embedded_url(Path(settings.data_dir))
        if found:
            settings = replace(settings, redis_url=found)
    otel.setup(settings.telemetry)
    checks = config_checks(settings)
    if not as_json:
        print("Configuration", file=out)
        _table(checks, out)
        print(f"\nLive probe against {url}", file=out, flush=True)
    probes = probe_checks(settings, url, sys.stderr if as_json else out, wait_s)
    failed = any(c.status == FAIL for c in checks + probes)
    if as_json:
        json.dump(
            {
                "ok": not failed,
                "configuration": [asdict(c) for c in checks],
                "probe": [asdict(c) for c in probes],
            },
            out,
            indent=2,
        )
        print(file=out)
    else:
        _table(probes, out)
        print(
            "\n" + ("The trace is whole." if not failed else "The trace is broken: see FAIL rows."),
            file=out,
        )
    return 1 if failed else 0
