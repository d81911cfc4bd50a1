"""Process-wide setup: provider, propagator and Sentry, once per process.

`setup()` is the only place that touches global state (OpenTelemetry's tracer
provider and propagator, Sentry's client). It is idempotent and safe after a fork:
the SDK's batch processor and sentry-sdk's transport restart their threads in the
child, so a process forked after setup (gunicorn with preload, an RQ work horse)
keeps exporting. `Telemetry.shutdown()` flushes and lets `setup()` run anew, which
tests use to run several configurations in one process.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import sentry_sdk
from opentelemetry import trace
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from sentry_sdk.transport import Transport, make_transport

from otel.config import TelemetryConfig
from otel.counters import Counters
from otel.forks import keep_inherited
from otel.handoff import HandoffProcessor
from otel.propagation import DscDefaults, TracegatePropagator, compose
from otel.provider import build_provider, flush, sample_rate, within
from otel.sentry import SentryBridge, init_sentry
from otel.transport import DeferredTransport, EventSink, count_losses

__all__ = ["Telemetry", "active", "setup"]

logger = logging.getLogger(__name__)
_lock = threading.Lock()
_active: Telemetry | None = None


@dataclass
class Telemetry:
    """What `setup()` built for this process."""

    config: TelemetryConfig
    provider: TracerProvider | None
    propagator: TracegatePropagator
    bridge: SentryBridge | None
    # Hands a forked work horse's spans to its parent (None with the SDK disabled, or
    # when TRACEGATE_RQ_EXPORT=flush makes each work horse export its own).
    handoff: HandoffProcessor | None = None
    # What this process's telemetry lost or refused (see `otel.counters`).
    counters: Counters = field(default_factory=Counters)
    _events_at_fork: int = -1

    @property
    def sentry_enabled(self) -> bool:
        return self.bridge is not None

    def tracer_provider(self) -> trace.TracerProvider:
        return self.provider if self.provider is not None else trace.NoOpTracerProvider()

    def tracer(self, name: str) -> trace.Tracer:
        return self.tracer_provider().get_tracer(name)

    def flush(self, timeout_s: float | None = None, *, spans: bool = True) -> bool:
        """Export pending spans and send pending Sentry events within one deadline.

        `spans=False` flushes Sentry only. Sentry is skipped when this process has
        captured no event since `after_fork` (a work horse that sent nothing).
        """
        budget = self.config.flush_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + budget
        ok = True
        if spans and self.provider is not None:
            ok = flush(self.provider, budget, self.counters)
        client = sentry_sdk.get_client()
        bridge = self.bridge
        if bridge is not None and client.is_active() and bridge.events_seen != self._events_at_fork:
            remaining = max(0.0, deadline - time.monotonic())
            started = time.monotonic()
            client.flush(timeout=remaining)
            # sentry-sdk's flush returns as soon as its queue is empty, else at the
            # deadline (the events left are lost when the process exits).
            if remaining > 0.001 and time.monotonic() - started >= remaining * 0.95:
                self.counters.add("flush_deadline_missed", what="sentry flush")
                ok = False
        return ok

    def after_fork(self) -> None:
        """In a forked child: give Sentry a transport of its own, made on first use.

        The child inherits the parent's transport queue mid-flight: an envelope the
        parent was sending when it forked stays "unfinished" in the child's copy
        forever, and every flush there waits for it until its deadline. A new
        transport starts clean; the parent's is left as it is (`keep_inherited`). It is
        made when the child first sends (`DeferredTransport`): a work horse that hands
        its spans over sends nothing.
        """
        self.counters.reset()  # the parent's counts are the parent's to report
        if self.bridge is None:
            return
        self._events_at_fork = self.bridge.events_seen
        client = sentry_sdk.get_client()
        if not client.is_active():
            return
        inherited = client.transport
        if inherited is None:
            return
        keep_inherited(inherited)
        options, counters = client.options, self.counters

        def make() -> Transport | None:
            try:
                transport = make_transport(options)
                count_losses(transport, counters)
                return transport
            except Exception:  # telemetry never breaks a job
                logger.exception("tracegate: could not renew the Sentry transport after fork")
                return None

        client.transport = DeferredTransport(make, inherited)

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Flush, then stop exporting; bounded by the same deadline as `flush`."""
        global _active
        budget = self.config.flush_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + budget
        self.flush(budget)
        provider = self.provider
        if provider is not None:
            within(
                max(0.0, deadline - time.monotonic()),
                "provider shutdown",
                provider.shutdown,
                self.counters,
            )
        if self.bridge is not None:
            sentry_sdk.get_client().close(timeout=0)
        with _lock:
            if _active is self:
                _active = None


def active() -> Telemetry | None:
    return _active


def setup(
    config: TelemetryConfig | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    processors: Sequence[SpanProcessor] = (),
    event_sink: EventSink | None = None,
    counters: Counters | None = None,
    **overrides: Any,
) -> Telemetry:
    """Set up OpenTelemetry and Sentry for this process, or return what is set up.

    `config` defaults to `TelemetryConfig.from_env(environ or os.environ)`; keyword
    overrides name `TelemetryConfig` fields (`service_name="api"`, `sentry_dsn=""`).
    `processors` are added after the OTLP export (a work horse hands them its spans
    too); `event_sink` receives every Sentry error and message event, DSN or not;
    `counters` is where losses are counted (a new `Counters` by default), for callers
    whose own processors count into the same place.
    """
    global _active
    with _lock:
        if _active is not None:
            if config is not None and config != _active.config:
                logger.warning("tracegate: already set up in this process; new settings ignored")
            return _active
        if config is None:
            config = TelemetryConfig.from_env(os.environ if environ is None else environ)
        if overrides:
            config = config.with_overrides(**overrides)
        counters = counters if counters is not None else Counters()
        propagator = TracegatePropagator(
            DscDefaults(
                public_key=urlsplit(config.sentry_dsn).username or "",
                environment=config.sentry_environment,
                release=config.sentry_release,
                sample_rate=sample_rate(config),
            ),
            counters,
        )
        # Imported here: `opentelemetry.propagate` builds OTEL_PROPAGATORS on import and
        # raises for a name that is not installed, which settings report first.
        from opentelemetry import propagate

        propagate.set_global_textmap(compose(_configured_textmap(config), propagator))
        bridge = None
        if config.sentry_dsn or config.sentry_spotlight or event_sink is not None:
            bridge = SentryBridge(config, propagator)
            init_sentry(config, bridge, event_sink, counters)
        provider = handoff = None
        if not config.sdk_disabled:
            chain = [*processors, *([bridge] if bridge is not None else [])]
            provider, handoff = build_provider(config, chain, counters)
            _set_global_provider(provider)
        if config.rq_export != "handoff":
            handoff = None
        _active = Telemetry(config, provider, propagator, bridge, handoff, counters)
        _register_exit_hook()
        return _active


_exit_hook_registered = False


def _register_exit_hook() -> None:
    global _exit_hook_registered
    if not _exit_hook_registered:
        atexit.register(_shutdown_at_exit)
        _exit_hook_registered = True


def _shutdown_at_exit() -> None:
    telemetry = _active
    if telemetry is not None:
        telemetry.shutdown()


def _set_global_provider(provider: TracerProvider) -> None:
    # OpenTelemetry allows one global provider per process; the first setup owns it.
    # Later ones (tests, a re-setup after shutdown) are used through `Telemetry`.
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(provider)


def _configured_textmap(config: TelemetryConfig) -> TextMapPropagator:
    """The propagators `config.propagators` names (it may come from a TOML file or
    `setup(environ=...)`, which OpenTelemetry never reads), else the global ones."""
    from opentelemetry import propagate

    names = [name.strip() for name in config.propagators.split(",") if name.strip()]
    if not names:
        return propagate.get_global_textmap()
    from importlib.metadata import entry_points

    found = {ep.name: ep for ep in entry_points(group="opentelemetry_propagator")}
    # Unknown names were refused by the settings; "none" means none of OTel's.
    return CompositePropagator([found[name].load()() for name in names if name in found])
