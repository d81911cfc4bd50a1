"""The TracerProvider: resource, the one sampler, OTLP export, and a flush with a deadline.

Built from a `TelemetryConfig`, never from import-time state. Fork safety comes from
the batch processor (`otel.batch`), which renews its locks in a forked child and starts
its export thread there only when the child has spans to export; `flush` bounds the
wait for the export, which a `force_flush` does not (it waits for the exporter).

Exporters behind batch processors that count what they lose: OTLP to
`OTEL_EXPORTER_OTLP_*` (label `otlp`), and with `TRACEGATE_SENTRY_TRACES=otlp` and a
DSN, OTLP/HTTP to Sentry's OTLP endpoint derived from the DSN (label `sentry_otlp`).
When both take OTLP/HTTP protobuf, one processor encodes each batch once for both
(`otel.fanout`).
"""

from __future__ import annotations

import contextvars
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes

from otel.batch import CountingBatchSpanProcessor
from otel.config import EnvReader, TelemetryConfig, otlp_headers
from otel.counters import Counters
from otel.fanout import FanoutExporter, Poster, post_with_retries
from otel.forks import at_fork
from otel.handoff import HandoffProcessor
from otel.otlp import encode_spans
from otel.propagation import DEFERRED_SAMPLING_KEY, AdoptingIdGenerator

__all__ = [
    "CountingBatchSpanProcessor",
    "RatioSampler",
    "SentryOTLPExporter",
    "TracegateSampler",
    "build_exporter",
    "build_provider",
    "build_sampler",
    "build_sentry_exporter",
    "flush",
    "sentry_otlp_target",
    "trust_inbound",
    "untrust_reset",
    "within",
]

logger = logging.getLogger(__name__)


# Whether the caller of the current request may decide sampling; None: the
# configuration says (set per request by `otel.flask` from the peer's address).
_inbound_trusted: contextvars.ContextVar[bool | None] = contextvars.ContextVar(
    "tracegate_inbound_trusted", default=None
)


def trust_inbound(trusted: bool | None) -> contextvars.Token[bool | None]:
    """Say whether the current request's caller may decide sampling (reset with the token)."""
    return _inbound_trusted.set(trusted)


def untrust_reset(token: contextvars.Token[bool | None]) -> None:
    _inbound_trusted.reset(token)


class TracegateSampler(Sampler):
    """One head decision: parent-based, with two exceptions for remote parents.

    A remote parent's flag is not obeyed when its caller is untrusted (the
    configuration, or the current request's peer address, says so), nor when the
    parent deferred the decision (a `sentry-trace` without a flag); then the root
    sampler decides, on the trace id, as every service would. The trace continues
    either way: only who decides changes.
    """

    def __init__(self, root: Sampler, *, parent_based: bool, honour_inbound: bool) -> None:
        self._root = root
        self._parent_based = ParentBased(root) if parent_based else None
        self._honour_inbound = honour_inbound

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        sampler = self._root
        if self._parent_based is not None:
            parent = trace.get_current_span(parent_context).get_span_context()
            trusted = _inbound_trusted.get()
            honour = self._honour_inbound if trusted is None else trusted
            remote_undecided = parent.is_remote and (
                not honour or otel_context.get_value(DEFERRED_SAMPLING_KEY, parent_context)
            )
            if parent.is_valid and not remote_undecided:
                sampler = self._parent_based
        return sampler.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"TracegateSampler{{{self._root.get_description()}}}"


class RatioSampler(Sampler):
    """Samples a share of traces, deciding on the trace id's low 56 bits.

    OpenTelemetry's TraceIdRatioBased reads the low 64 bits. A UUIDv4 adopted from
    `X-Trace-ID` has fixed variant bits there (its low 64 bits always fall in
    [0.5, 0.75) of the range), which would sample 0% or 100% of such traces. The low
    56 bits are random in a UUIDv4 and in every W3C Level 2 id with the random flag.
    `otel.propagation.sample_rand` reads the same bits, so Sentry agrees.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.bound = round(rate * (1 << 56))

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        sampled = (trace_id & _LOW_56) < self.bound
        decision = Decision.RECORD_AND_SAMPLE if sampled else Decision.DROP
        parent_state = trace.get_current_span(parent_context).get_span_context().trace_state
        return SamplingResult(decision, attributes if sampled else None, parent_state)

    def get_description(self) -> str:
        return f"RatioSampler{{{self.rate}}}"


_LOW_56 = (1 << 56) - 1


def build_sampler(config: TelemetryConfig) -> TracegateSampler:
    base = config.sampler.removeprefix("parentbased_")
    root: Sampler
    if base == "always_on":
        root = ALWAYS_ON
    elif base == "always_off":
        root = ALWAYS_OFF
    else:
        root = RatioSampler(config.sampler_arg)
    return TracegateSampler(
        root, parent_based=config.parent_based, honour_inbound=config.honour_inbound_sampled
    )


def sample_rate(config: TelemetryConfig) -> float:
    """The root sampler's rate, as Sentry's dynamic sampling context states it."""
    base = config.sampler.removeprefix("parentbased_")
    return {"always_on": 1.0, "always_off": 0.0}.get(base, config.sampler_arg)


def build_exporter(config: TelemetryConfig) -> SpanExporter | None:
    if not config.otlp_enabled:
        return None
    headers = dict(config.otlp_headers)
    if config.otlp_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            Compression as GrpcCompression,
        )
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcExporter,
        )

        grpc_compression = (
            GrpcCompression.Gzip
            if config.otlp_compression == "gzip"
            else GrpcCompression.NoCompression
        )
        return GrpcExporter(
            endpoint=config.otlp_url(),
            headers=headers,
            timeout=config.otlp_timeout_s,
            compression=grpc_compression,
        )
    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    compression = {
        "gzip": Compression.Gzip,
        "deflate": Compression.Deflate,
    }.get(config.otlp_compression, Compression.NoCompression)
    return OTLPSpanExporter(
        endpoint=config.otlp_url(),
        headers=headers,
        timeout=config.otlp_timeout_s,
        compression=compression,
    )


def sentry_otlp_target(dsn: str, client: str) -> tuple[str, str]:
    """Sentry's OTLP traces URL for a DSN, and the `X-Sentry-Auth` value to send.

    The same form sentry-sdk's OTLPIntegration uses:
    `{scheme}://{host}{path}api/{project_id}/integration/otlp/v1/traces/` and
    `Sentry sentry_key=<public key>, sentry_version=7, sentry_client=<client>`.
    """
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]  # keeps a port and IPv6 brackets as written
    path, _, project_id = parts.path.rstrip("/").rpartition("/")
    url = f"{parts.scheme}://{host}{path}/api/{project_id}/integration/otlp/v1/traces/"
    auth = f"Sentry sentry_key={parts.username}, sentry_version=7, sentry_client={client}"
    if parts.password:  # a legacy DSN with a secret key
        auth += f", sentry_secret={parts.password}"
    return url, auth


class SentryOTLPExporter(SpanExporter):
    """OTLP/HTTP (protobuf) to Sentry's OTLP endpoint, configured by the DSN alone.

    Not OpenTelemetry's exporter: that one also reads `OTEL_EXPORTER_OTLP_HEADERS` and
    `_CERTIFICATE` / `_CLIENT_*` from the environment, meant for the collector, and
    would hand the collector's credentials to Sentry (or check Sentry's certificate
    against the collector's private CA). Like it, a 429 or 5xx answer and a failed
    connection are retried with a growing pause until the export timeout.
    """

    def __init__(self, url: str, auth: str, timeout_s: float, user_agent: str) -> None:
        self.url = url
        self._timeout_s = timeout_s
        self._headers = {
            "Content-Type": "application/x-protobuf",
            "User-Agent": user_agent,
            "X-Sentry-Auth": auth,
        }
        self._session = self._new_session()
        self._stopped = threading.Event()
        # A forked child (an RQ work horse that exports) must not write to the parent's
        # pooled connections: it gets its own, the parent's stay untouched.
        at_fork(self, after_in_child="_renew_session")

    def _renew_session(self) -> None:
        self._session = self._new_session()

    def _new_session(self) -> Any:
        import requests

        session = requests.Session()
        session.headers.update(self._headers)
        return session

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self._stopped.is_set():
            return SpanExportResult.FAILURE
        body = encode_spans(spans)
        problem = post_with_retries(self._session, self.url, body, self._timeout_s, self._stopped)
        if problem is None:
            return SpanExportResult.SUCCESS
        logger.warning("tracegate: export of %d spans to Sentry failed: %s", len(spans), problem)
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self._stopped.set()
        self._session.close()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def build_sentry_exporter(config: TelemetryConfig) -> SentryOTLPExporter | None:
    """The exporter to Sentry's OTLP endpoint, with TRACEGATE_SENTRY_TRACES=otlp and a DSN."""
    if not config.sentry_otlp_enabled:
        return None
    client = f"tracegate/{_version()}"
    url, auth = sentry_otlp_target(config.sentry_dsn, client)
    return SentryOTLPExporter(url, auth, config.otlp_timeout_s, client)


# Settings only OpenTelemetry's own HTTP exporter knows how to apply (read by it from
# the environment): with any of them, the collector keeps that exporter.
_EXPORTER_ONLY_ENV = (
    *(
        f"OTEL_EXPORTER_OTLP_{scope}{name}"
        for scope in ("", "TRACES_")
        for name in ("CERTIFICATE", "CLIENT_KEY", "CLIENT_CERTIFICATE")
    ),
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
    "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER",
)


def build_fanout(config: TelemetryConfig, counters: Counters) -> FanoutExporter | None:
    """tracegate's OTLP/HTTP export (`otel.fanout`): to the collector, and to Sentry's
    OTLP endpoint with TRACEGATE_SENTRY_TRACES=otlp, each batch encoded once, when the
    collector takes OTLP/HTTP protobuf and nothing asks for OpenTelemetry's exporter."""
    if not config.otlp_enabled:
        return None
    if config.otlp_protocol != "http/protobuf" or any(
        os.environ.get(name) for name in _EXPORTER_ONLY_ENV
    ):
        return None
    client = f"tracegate/{_version()}"
    url, auth = sentry_otlp_target(config.sentry_dsn, client)
    # As OpenTelemetry's exporter does: headers given in the settings, else the
    # process environment's (a config built from another mapping may have none).
    headers = dict(config.otlp_headers) or otlp_headers(EnvReader(os.environ))
    collector = Poster(
        "otlp",
        config.otlp_url(),
        {"User-Agent": client, **headers},
        config.otlp_timeout_s,
        counters,
        compression=config.otlp_compression,
    )
    if not config.sentry_otlp_enabled:
        return FanoutExporter((collector,))
    sentry = Poster(
        "sentry_otlp",
        url,
        {"User-Agent": client, "X-Sentry-Auth": auth},
        config.otlp_timeout_s,
        counters,
    )
    return FanoutExporter((collector, sentry))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tracegate")
    except PackageNotFoundError:  # run from a source tree
        return "0"


class _TracerProvider(TracerProvider):
    """The SDK's provider, with a cheaper resource in a forked child.

    After a fork the SDK re-runs its process-dependent resource detectors — through a
    thread pool, and drawing a new `service.instance.id` — in every child: 1 to 3 ms on
    each RQ job's path, and a new service instance per job for the backend. Here a
    child keeps its parent's instance and gets its own `process.pid`, which tells
    work horses from their worker.
    """

    def _handle_fork(self) -> None:
        self._tracers_lock = threading.Lock()
        update = getattr(self, "_update_resource", None)
        if update is not None:
            update(Resource({"process.pid": os.getpid()}))


def build_provider(
    config: TelemetryConfig,
    processors: list[SpanProcessor] | None = None,
    counters: Counters | None = None,
) -> tuple[TracerProvider, HandoffProcessor]:
    """The provider, and the processor that can hand a work horse's spans over."""
    # process.pid tells gunicorn workers and RQ work horses apart; built after any fork.
    attributes: dict[str, str | int] = {
        "service.name": config.service_name,
        "process.pid": os.getpid(),
        **config.resource_attributes,
    }
    if config.service_name == "unknown_service" and "service.name" in config.resource_attributes:
        attributes["service.name"] = config.resource_attributes["service.name"]
    provider = _TracerProvider(
        resource=Resource.create(attributes),
        sampler=build_sampler(config),
        id_generator=AdoptingIdGenerator(),
        # The SDK's own exit hook waits out the exporter's timeout and retries against
        # a dead collector; `otel.setup()` registers one bounded by the flush deadline.
        shutdown_on_exit=False,
    )
    chain: list[SpanProcessor] = []
    counters = counters or Counters()
    fanout = build_fanout(config, counters)
    if fanout is not None:
        also = tuple(poster.name for poster in fanout.posters[1:])
        chain.append(CountingBatchSpanProcessor(fanout, counters, "otlp", also=also))
    else:
        exporter = build_exporter(config)
        if exporter is not None:
            chain.append(CountingBatchSpanProcessor(exporter, counters, "otlp"))
        sentry_exporter = build_sentry_exporter(config)
        if sentry_exporter is not None:
            chain.append(CountingBatchSpanProcessor(sentry_exporter, counters, "sentry_otlp"))
    chain.extend(processors or ())
    handoff = HandoffProcessor(chain, counters)
    provider.add_span_processor(handoff)
    return provider, handoff


def flush(
    provider: trace.TracerProvider, timeout_s: float, counters: Counters | None = None
) -> bool:
    """Export what is pending, waiting at most `timeout_s`; True when it finished.

    A processor's `force_flush` blocks until its exporter gives up (retries included);
    the exporter's timeout is its own. So it runs in a daemon thread, abandoned at the
    deadline.
    """
    force_flush = getattr(provider, "force_flush", None)
    if force_flush is None:
        return True
    return within(timeout_s, "span flush", lambda: force_flush(int(timeout_s * 1000)), counters)


def within(
    timeout_s: float, what: str, work: Callable[[], object], counters: Counters | None = None
) -> bool:
    """Run `work` in a daemon thread and wait at most `timeout_s` for it; False also
    when `work` itself returned False (a flush that gave up at its own deadline)."""
    done = threading.Event()
    results: list[object] = []

    def run() -> None:
        try:
            results.append(work())
        except Exception:  # telemetry must never break the caller
            logger.exception("tracegate: %s failed", what)
        finally:
            done.set()

    threading.Thread(target=run, name=f"tracegate-{what.replace(' ', '-')}", daemon=True).start()
    finished = done.wait(timeout_s) and results != [False]
    if not finished:
        logger.warning("tracegate: %s did not finish within %.2fs", what, timeout_s)
        if counters is not None:
            counters.add("flush_deadline_missed", what=what)
    return finished
