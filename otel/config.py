"""Telemetry configuration: one typed, validated value read from the environment.

`TelemetryConfig.from_env(environ)` is the library's only reader of environment
variables. It reads the ecosystem's own names (`OTEL_*`, `SENTRY_*`) with their
upstream meaning plus a few `TRACEGATE_*` knobs, and reports every bad value at
once in a `ConfigError` instead of stopping at the first.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import unquote

__all__ = [
    "SAMPLERS",
    "SENTRY_TRACES",
    "ConfigError",
    "EnvReader",
    "TelemetryConfig",
    "otlp_headers",
]

SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
_PROTOCOLS = ("http/protobuf", "grpc")
# TRACEGATE_SENTRY_TRACES: how sampled spans reach Sentry.
SENTRY_TRACES = ("envelope", "otlp")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


class ConfigError(ValueError):
    """Every problem found in a configuration, one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True)
class TelemetryConfig:
    """What `otel.setup()` needs: OpenTelemetry, Sentry and the bridge between them."""

    service_name: str = "unknown_service"
    resource_attributes: Mapping[str, str] = field(default_factory=dict)
    sdk_disabled: bool = False
    sampler: str = "parentbased_always_on"
    sampler_arg: float = 1.0
    # Whether an inbound sampled flag (traceparent, sentry-trace) is obeyed. Off at an
    # edge facing untrusted callers, so nobody can force 100% sampling.
    honour_inbound_sampled: bool = True
    # When set (CIDR networks), the flag is honoured only from requests whose peer
    # address (REMOTE_ADDR) is in one of them; from anywhere else it is ignored.
    inbound_sampled_from: tuple[str, ...] = ()
    # OTEL_EXPORTER_OTLP_ENDPOINT (a base URL) and OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (used as is).
    otlp_endpoint: str = ""
    otlp_traces_endpoint: str = ""
    otlp_protocol: str = "http/protobuf"
    otlp_headers: Mapping[str, str] = field(default_factory=dict)
    otlp_timeout_s: float = 10.0
    otlp_compression: str = ""
    sentry_dsn: str = ""
    sentry_environment: str = "development"
    sentry_release: str = ""
    sentry_spotlight: str = ""
    sentry_debug: bool = False
    # "envelope": sampled segments go to Sentry as transaction envelopes built by the
    # bridge; "otlp": sampled spans go, batched, to Sentry's OTLP endpoint (derived from
    # the DSN) and the bridge only links errors. Either way errors are linked.
    sentry_traces: str = "envelope"
    # Envelopes the transport writes at once on its connection to Sentry before it reads
    # their answers (HTTP/1.1 pipelining); 1: one request, one answer, then the next.
    sentry_pipeline: int = 16
    # "uuid" or "hex": how X-Trace-ID and the Sentry `trace_id` tag spell the id.
    trace_id_format: str = "uuid"
    flush_timeout_s: float = 2.0
    max_spans_per_segment: int = 1000
    max_open_segments: int = 1000
    max_segment_age_s: float = 600.0
    cors_origins: tuple[str, ...] = ()
    # OTEL_PROPAGATORS as given; OpenTelemetry reads it itself, tracegate checks it.
    propagators: str = ""
    # RQ: the hard deadline of the flush before a forked work horse exits; whether
    # every failed attempt is reported to Sentry or only the final one; whether a
    # delayed job (enqueue_in / enqueue_at) starts a new trace linked to its creator.
    rq_flush_timeout_s: float = 0.5
    rq_report_every_attempt: bool = False
    rq_delayed_links_only: bool = False
    # "handoff": a work horse hands its spans to the worker process through Redis,
    # which exports them; "flush": each work horse exports its own before it exits.
    rq_export: str = "handoff"
    # Replicas that must hold what goes through Redis before it counts as done (Redis
    # WAIT): the gateway's job acknowledgments, and a work horse's hand-over of its
    # spans, so a failover to a replica loses neither. 0: don't wait.
    redis_wait_replicas: int = 0
    # Comma-separated regexes of URLs that get no server span (OpenTelemetry's syntax).
    excluded_urls: str = ""
    # OTEL_SEMCONV_STABILITY_OPT_IN holds "http/dup": server spans carry the old HTTP
    # attribute names beside the stable ones.
    http_old_names: bool = False

    @property
    def sentry_enabled(self) -> bool:
        return bool(self.sentry_dsn)

    @property
    def sentry_otlp_enabled(self) -> bool:
        """Spans go to Sentry's OTLP endpoint (instead of transaction envelopes)."""
        return self.sentry_traces == "otlp" and bool(self.sentry_dsn)

    @property
    def otlp_enabled(self) -> bool:
        return bool(self.otlp_endpoint or self.otlp_traces_endpoint)

    def otlp_url(self) -> str:
        """Where spans go: http/protobuf appends /v1/traces to a base URL, gRPC does not."""
        if self.otlp_traces_endpoint:
            return self.otlp_traces_endpoint
        if self.otlp_protocol == "grpc":
            return self.otlp_endpoint
        return self.otlp_endpoint.rstrip("/") + "/v1/traces"

    @property
    def parent_based(self) -> bool:
        return self.sampler.startswith("parentbased_")

    def with_overrides(self, **overrides: Any) -> TelemetryConfig:
        """A copy with keyword overrides, validated like the environment."""
        unknown = sorted(set(overrides) - set(self.__dataclass_fields__))
        if unknown:
            raise ConfigError([f"unknown setting {name!r}" for name in unknown])
        updated = replace(self, **overrides)
        problems = updated.problems()
        if problems:
            raise ConfigError(problems)
        return updated

    def problems(self) -> list[str]:
        """Cross-field checks shared by the environment and keyword paths."""
        found: list[str] = []
        if self.sampler not in SAMPLERS:
            found.append(
                f"OTEL_TRACES_SAMPLER: {self.sampler!r} is not one of {', '.join(SAMPLERS)}"
            )
        if not 0.0 <= self.sampler_arg <= 1.0:
            found.append(f"OTEL_TRACES_SAMPLER_ARG: {self.sampler_arg} is not between 0 and 1")
        if self.otlp_protocol not in _PROTOCOLS:
            found.append(
                f"OTEL_EXPORTER_OTLP_PROTOCOL: {self.otlp_protocol!r} is not one of "
                + ", ".join(_PROTOCOLS)
            )
        elif (
            self.otlp_protocol == "grpc"
            and self.otlp_enabled
            and importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is None
        ):
            found.append(
                "OTEL_EXPORTER_OTLP_PROTOCOL: grpc needs opentelemetry-exporter-otlp-proto-grpc "
                "(pip install 'tracegate[grpc]') or use http/protobuf"
            )
        for name, url in (
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.otlp_endpoint),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", self.otlp_traces_endpoint),
        ):
            if url and not url.startswith(("http://", "https://")):
                found.append(f"{name}: {url!r} is not an http(s) URL")
        if self.otlp_compression not in ("", "gzip", "deflate", "none"):
            found.append(f"OTEL_EXPORTER_OTLP_COMPRESSION: {self.otlp_compression!r} is not gzip")
        if self.sentry_dsn:
            problem = _dsn_problem(self.sentry_dsn)
            if problem:
                found.append(f"SENTRY_DSN: {problem}")
        missing = _missing_propagators(self.propagators)
        if missing:
            found.append(
                f"OTEL_PROPAGATORS: {', '.join(missing)} not installed "
                "(install the package or remove the name)"
            )
        for network in self.inbound_sampled_from:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                found.append(f"TRACEGATE_INBOUND_SAMPLED_FROM: {network!r} is not a network")
        if self.inbound_sampled_from and not self.honour_inbound_sampled:
            found.append(
                "TRACEGATE_INBOUND_SAMPLED_FROM: only with TRACEGATE_INBOUND_SAMPLED=honour "
                "(ignore already ignores every caller's flag)"
            )
        if self.sentry_traces not in SENTRY_TRACES:
            found.append(
                f"TRACEGATE_SENTRY_TRACES: {self.sentry_traces!r} is not one of "
                + ", ".join(SENTRY_TRACES)
            )
        if self.trace_id_format not in ("uuid", "hex"):
            found.append(f"TRACEGATE_TRACE_ID_FORMAT: {self.trace_id_format!r} is not uuid or hex")
        for name, value in (
            ("TRACEGATE_FLUSH_TIMEOUT_S", self.flush_timeout_s),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", self.otlp_timeout_s),
            ("TRACEGATE_MAX_SEGMENT_AGE_S", self.max_segment_age_s),
            ("TRACEGATE_RQ_FLUSH_TIMEOUT_S", self.rq_flush_timeout_s),
        ):
            if value <= 0:
                found.append(f"{name}: must be greater than 0")
        for name, count in (
            ("TRACEGATE_MAX_SPANS_PER_SEGMENT", self.max_spans_per_segment),
            ("TRACEGATE_MAX_OPEN_SEGMENTS", self.max_open_segments),
            ("TRACEGATE_SENTRY_PIPELINE", self.sentry_pipeline),
        ):
            if count < 1:
                found.append(f"{name}: must be at least 1")
        if self.redis_wait_replicas < 0:
            found.append("TRACEGATE_REDIS_WAIT_REPLICAS: must be 0 or more")
        return found

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TelemetryConfig:
        """Read and validate; raises `ConfigError` listing every bad value."""
        reader = EnvReader(environ)
        config = cls(
            service_name=environ.get("OTEL_SERVICE_NAME", "").strip() or "unknown_service",
            resource_attributes=reader.pairs("OTEL_RESOURCE_ATTRIBUTES"),
            sdk_disabled=reader.flag("OTEL_SDK_DISABLED", False),
            sampler=environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
            or "parentbased_always_on",
            sampler_arg=reader.number("OTEL_TRACES_SAMPLER_ARG", 1.0),
            honour_inbound_sampled=reader.choice(
                "TRACEGATE_INBOUND_SAMPLED", ("honour", "ignore"), "honour"
            )
            == "honour",
            inbound_sampled_from=reader.words("TRACEGATE_INBOUND_SAMPLED_FROM"),
            otlp_endpoint=environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip(),
            otlp_traces_endpoint=environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip(),
            otlp_protocol=(
                environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or "http/protobuf"
            ).strip(),
            otlp_headers=otlp_headers(reader),
            # OTel gives this one in milliseconds.
            otlp_timeout_s=reader.number(
                "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT"
                if "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT" in environ
                else "OTEL_EXPORTER_OTLP_TIMEOUT",
                10_000.0,
            )
            / 1000.0,
            otlp_compression=(
                environ.get("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION")
                or environ.get("OTEL_EXPORTER_OTLP_COMPRESSION")
                or ""
            )
            .strip()
            .lower(),
            sentry_dsn=environ.get("SENTRY_DSN", "").strip(),
            sentry_environment=environ.get("SENTRY_ENVIRONMENT", "").strip() or "development",
            sentry_release=environ.get("SENTRY_RELEASE", "").strip(),
            sentry_spotlight=_spotlight(environ.get("SENTRY_SPOTLIGHT", "")),
            sentry_debug=reader.flag("SENTRY_DEBUG", False),
            sentry_traces=reader.choice("TRACEGATE_SENTRY_TRACES", SENTRY_TRACES, "envelope"),
            sentry_pipeline=int(reader.number("TRACEGATE_SENTRY_PIPELINE", 16)),
            trace_id_format=environ.get("TRACEGATE_TRACE_ID_FORMAT", "uuid").strip().lower(),
            flush_timeout_s=reader.number("TRACEGATE_FLUSH_TIMEOUT_S", 2.0),
            max_spans_per_segment=int(reader.number("TRACEGATE_MAX_SPANS_PER_SEGMENT", 1000)),
            max_open_segments=int(reader.number("TRACEGATE_MAX_OPEN_SEGMENTS", 1000)),
            max_segment_age_s=reader.number("TRACEGATE_MAX_SEGMENT_AGE_S", 600.0),
            cors_origins=reader.words("TRACEGATE_CORS_ORIGINS"),
            propagators=environ.get("OTEL_PROPAGATORS", "").strip(),
            rq_flush_timeout_s=reader.number("TRACEGATE_RQ_FLUSH_TIMEOUT_S", 0.5),
            rq_report_every_attempt=reader.flag("TRACEGATE_RQ_REPORT_EVERY_ATTEMPT", False),
            rq_delayed_links_only=reader.flag("TRACEGATE_RQ_DELAYED_LINKS_ONLY", False),
            rq_export=reader.choice("TRACEGATE_RQ_EXPORT", ("handoff", "flush"), "handoff"),
            redis_wait_replicas=int(reader.number("TRACEGATE_REDIS_WAIT_REPLICAS", 0)),
            excluded_urls=environ.get(
                "OTEL_PYTHON_FLASK_EXCLUDED_URLS", environ.get("OTEL_PYTHON_EXCLUDED_URLS", "")
            ).strip(),
            http_old_names="http/dup"
            in [
                part.strip() for part in environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "").split(",")
            ],
        )
        problems = reader.problems + config.problems()
        if problems:
            raise ConfigError(problems)
        return config


class EnvReader:
    """Typed reads of environment values that collect problems instead of raising."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []

    def flag(self, name: str, default: bool) -> bool:
        raw = self.environ.get(name)
        if raw is None:
            return default
        value = raw.strip().lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        self.problems.append(f"{name}: {raw!r} is not a boolean (use true or false)")
        return default

    def number(self, name: str, default: float) -> float:
        raw = self.environ.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            self.problems.append(f"{name}: {raw!r} is not a number")
            return default
        if not math.isfinite(value):
            self.problems.append(f"{name}: {raw!r} is not a finite number")
            return default
        return value

    def choice(self, name: str, choices: tuple[str, ...], default: str) -> str:
        raw = self.environ.get(name, "").strip().lower()
        if not raw:
            return default
        if raw not in choices:
            self.problems.append(f"{name}: {raw!r} is not one of {', '.join(choices)}")
            return default
        return raw

    def words(self, name: str) -> tuple[str, ...]:
        return tuple(w.strip() for w in self.environ.get(name, "").split(",") if w.strip())

    def pairs(self, name: str) -> dict[str, str]:
        """`k1=v1,k2=v2` as OTel spells resource attributes and OTLP headers."""
        result: dict[str, str] = {}
        for item in self.words(name):
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                self.problems.append(f"{name}: {item!r} is not key=value")
                continue
            result[unquote(key.strip())] = unquote(value.strip())
        return result


def otlp_headers(reader: EnvReader) -> dict[str, str]:
    """The OTLP headers, as OpenTelemetry's exporter reads them (the traces signal's own
    variable first)."""
    name = "OTEL_EXPORTER_OTLP_TRACES_HEADERS"
    if name not in reader.environ:
        name = "OTEL_EXPORTER_OTLP_HEADERS"
    return reader.pairs(name)


def _missing_propagators(configured: str) -> list[str]:
    """Names in OTEL_PROPAGATORS with no installed entry point (OTel would refuse to start)."""
    names = [n.strip() for n in configured.split(",") if n.strip() and n.strip() != "none"]
    if not names:
        return []
    from importlib.metadata import entry_points

    installed = {ep.name for ep in entry_points(group="opentelemetry_propagator")}
    return [n for n in names if n not in installed]


def _spotlight(raw: str) -> str:
    value = raw.strip()
    if value.lower() in _FALSE:
        return ""
    if value.lower() in _TRUE:
        return "http://localhost:8969/stream"
    return value


def _dsn_problem(dsn: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(dsn)
    if parts.scheme not in ("http", "https"):
        return "must start with http:// or https://"
    if not parts.username:
        return "has no public key (expected https://<key>@<host>/<project>)"
    if not parts.hostname:
        return "has no host"
    if not parts.path.strip("/").split("/")[-1].isdigit():
        return "does not end with a numeric project id"
    return ""
