"""The gateway's settings: `Settings.from_env(environ)` is the only reader of the environment.

Values come from the environment, over an optional TOML file named by
`TRACEGATE_CONFIG` whose top-level keys are the same variable names
(`OTEL_SERVICE_NAME = "checkout"`). Every bad value is listed in one `ConfigError`.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from gateway import redisconn
from gateway.store import StoreLimits
from gateway.tasks import DEMO_TASKS, Registry
from otel.config import ConfigError, EnvReader, TelemetryConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["ConfigError", "Settings", "Upstream", "configured"]

_DEFAULT_SERVICE = "tracegate"
# OpenTelemetry searches these regexes in the full URL, query string included, so they
# are anchored to the start of the path: `/v1/proxy/x/traces` or `/v1/jobs?next=/healthz`
# must still get their server span (and continue the caller's trace).
_EXCLUDED_URLS = r"^[a-z]+://[^/]+/(healthz|readyz|metrics|traces|v1/traces)([/?]|$)"
_UPSTREAM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_PROXY_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Upstream:
    """A proxy target: `/v1/proxy/<name>/<path>` goes to `url` + `/<path>`.

    `timeout_s` bounds the connect and every wait for the next bytes of the response,
    not the whole exchange: a large body may stream for longer while bytes keep coming.
    """

    url: str
    timeout_s: float = _PROXY_TIMEOUT_S
    # An untrusted upstream (a third party) gets the trace, never the baggage.
    trusted: bool = True


@dataclass(frozen=True)
class Settings:
    telemetry: TelemetryConfig = field(default_factory=TelemetryConfig)
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 2
    threads: int = 4
    redis_url: str = ""
    demo_routes: bool = True
    max_body_bytes: int = 1024 * 1024
    config_file: str = ""
    # Task name -> "module:function"; the allow-list of POST /v1/jobs.
    tasks: Mapping[str, str] = field(default_factory=dict)
    demo_tasks: bool = False
    queues: tuple[str, ...] = ("default",)
    api_keys: tuple[str, ...] = field(default=(), repr=False)
    store: bool = True
    data_dir: str = ".tracegate"
    log_format: str = "text"
    store_limits: StoreLimits = field(default_factory=StoreLimits)
    # Name -> upstream; the allow-list of /v1/proxy/<name>/<path>.
    upstreams: Mapping[str, Upstream] = field(default_factory=dict)
    proxy_timeout_s: float = _PROXY_TIMEOUT_S

    @property
    def redis(self) -> str:
        return self.redis_url or "redis://127.0.0.1:6379/0"

    def registry(self) -> Registry:
        paths = {**(DEMO_TASKS if self.demo_tasks else {}), **self.tasks}
        return Registry.from_paths(paths)[0]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        problems: list[str] = []
        env, tables = _layered(dict(os.environ if environ is None else environ), problems)
        env.setdefault("OTEL_SERVICE_NAME", _DEFAULT_SERVICE)
        # Probes and the trace viewer would otherwise fill the store with their own traces.
        env.setdefault("OTEL_PYTHON_FLASK_EXCLUDED_URLS", _EXCLUDED_URLS)
        reader = EnvReader(env)
        telemetry = TelemetryConfig()
        try:
            telemetry = TelemetryConfig.from_env(env)
        except ConfigError as error:
            problems += error.problems
        settings = cls(
            telemetry=telemetry,
            host=env.get("TRACEGATE_HOST", "127.0.0.1").strip() or "127.0.0.1",
            port=int(reader.number("TRACEGATE_PORT", 8080)),
            workers=int(reader.number("TRACEGATE_WORKERS", 2)),
            threads=int(reader.number("TRACEGATE_THREADS", 4)),
            redis_url=env.get("REDIS_URL", "").strip(),
            demo_routes=reader.flag("TRACEGATE_DEMO_ROUTES", True),
            max_body_bytes=int(reader.number("TRACEGATE_MAX_BODY_BYTES", 1024 * 1024)),
            config_file=env.get("TRACEGATE_CONFIG", "").strip(),
            tasks={**tables.get("tasks", {}), **reader.pairs("TRACEGATE_TASKS")},
            demo_tasks=reader.flag("TRACEGATE_DEMO_TASKS", False),
            queues=reader.words("TRACEGATE_QUEUES") or ("default",),
            api_keys=reader.words("TRACEGATE_API_KEYS"),
            store=reader.flag("TRACEGATE_STORE", True),
            data_dir=env.get("TRACEGATE_DATA_DIR", "").strip() or ".tracegate",
            log_format=reader.choice("TRACEGATE_LOG_FORMAT", ("text", "json"), "text"),
            store_limits=StoreLimits(
                max_traces=int(reader.number("TRACEGATE_STORE_MAX_TRACES", 1000)),
                max_age_s=int(reader.number("TRACEGATE_STORE_MAX_AGE_S", 24 * 3600)),
                max_spans_per_trace=int(reader.number("TRACEGATE_STORE_MAX_SPANS", 5000)),
            ),
            **_upstreams(reader, tables.get("upstreams", {}), problems),
        )
        problems += reader.problems + settings.problems()
        if problems:
            raise ConfigError(problems)
        return settings

    def problems(self) -> list[str]:
        found = []
        if not 0 < self.port < 65536:
            found.append(f"TRACEGATE_PORT: {self.port} is not a TCP port")
        if self.workers < 1:
            found.append("TRACEGATE_WORKERS: must be at least 1")
        if self.threads < 1:
            found.append("TRACEGATE_THREADS: must be at least 1")
        for name, value in (
            ("TRACEGATE_STORE_MAX_TRACES", self.store_limits.max_traces),
            ("TRACEGATE_STORE_MAX_AGE_S", self.store_limits.max_age_s),
            ("TRACEGATE_STORE_MAX_SPANS", self.store_limits.max_spans_per_trace),
        ):
            if value < 1:
                found.append(f"{name}: must be at least 1")
        if self.store_limits.max_age_s > 30 * 24 * 3600:
            found.append("TRACEGATE_STORE_MAX_AGE_S: at most 30 days (2592000)")
        if self.max_body_bytes < 1:
            found.append("TRACEGATE_MAX_BODY_BYTES: must be at least 1")
        paths = {**(DEMO_TASKS if self.demo_tasks else {}), **self.tasks}
        found += Registry.from_paths(paths)[1]
        if not _positive(self.proxy_timeout_s):
            found.append("TRACEGATE_PROXY_TIMEOUT_S: must be a positive number of seconds")
        for name, upstream in self.upstreams.items():
            found += _upstream_problems(name, upstream)
            # On the default timeout, an upstream shares the default's one problem line.
            if upstream.timeout_s != self.proxy_timeout_s and not _positive(upstream.timeout_s):
                found.append(f"TRACEGATE_PROXY_TIMEOUTS: {name}: must be a positive number")
        redis_problem = redisconn.problem(self.redis_url) if self.redis_url else None
        if redis_problem:  # not echoed: the URL may hold a password
            found.append(f"REDIS_URL {redis_problem}")
        return found


def configured(environ: Mapping[str, str]) -> set[str]:
    """The names the environment or the TOML file set (without tracegate's defaults)."""
    env, _ = _layered(dict(environ), [])
    return set(env)


Tables = dict[str, dict[str, str]]
_TABLES = ("tasks", "upstreams")


def _upstreams(reader: EnvReader, table: Mapping[str, str], problems: list[str]) -> dict[str, Any]:
    """`upstreams` and `proxy_timeout_s` for `Settings`: the [upstreams] table under
    `TRACEGATE_UPSTREAMS`, each with its `TRACEGATE_PROXY_TIMEOUTS` entry or the default,
    and untrusted when `TRACEGATE_UNTRUSTED_UPSTREAMS` names it."""
    default = reader.number("TRACEGATE_PROXY_TIMEOUT_S", _PROXY_TIMEOUT_S)
    urls = {**table, **reader.pairs("TRACEGATE_UPSTREAMS")}
    timeouts: dict[str, float] = {}
    for name, raw in reader.pairs("TRACEGATE_PROXY_TIMEOUTS").items():
        if name not in urls:
            problems.append(f"TRACEGATE_PROXY_TIMEOUTS: {name!r} is not a configured upstream")
            continue
        try:
            timeouts[name] = float(raw)
        except ValueError:
            problems.append(f"TRACEGATE_PROXY_TIMEOUTS: {name}={raw!r} is not a number of seconds")
    untrusted = set(reader.words("TRACEGATE_UNTRUSTED_UPSTREAMS"))
    for name in sorted(untrusted - set(urls)):
        problems.append(f"TRACEGATE_UNTRUSTED_UPSTREAMS: {name!r} is not a configured upstream")
    upstreams = {
        name: Upstream(url, timeouts.get(name, default), trusted=name not in untrusted)
        for name, url in urls.items()
    }
    return {"upstreams": upstreams, "proxy_timeout_s": default}


def _upstream_problems(name: str, upstream: Upstream) -> list[str]:
    found = []
    if not _UPSTREAM_NAME.match(name):
        found.append(f"TRACEGATE_UPSTREAMS: {name!r} is not an upstream name (A-Z a-z 0-9 _ . -)")
    parts = urlsplit(upstream.url)
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number in 0-65535
        port_ok = True
    except ValueError:
        port_ok = False
    if parts.scheme not in ("http", "https") or not parts.hostname:
        found.append(f"TRACEGATE_UPSTREAMS: {name}={upstream.url!r} is not an http(s)://host URL")
    elif not port_ok:
        found.append(f"TRACEGATE_UPSTREAMS: {name}={upstream.url!r} has an invalid port")
    elif parts.username is not None or parts.password is not None:
        # They would be sent nowhere (urllib3 ignores them) yet show up in url.full.
        found.append(f"TRACEGATE_UPSTREAMS: {name}: credentials in the URL are not supported")
    elif parts.query or parts.fragment or "?" in upstream.url or "#" in upstream.url:
        found.append(f"TRACEGATE_UPSTREAMS: {name}={upstream.url!r} must not have a query")
    return found


def _positive(seconds: float) -> bool:
    return math.isfinite(seconds) and seconds > 0


def _layered(env: dict[str, str], problems: list[str]) -> tuple[dict[str, str], Tables]:
    """The TOML file's values under the environment's, and the file's tables."""
    config_file = env.get("TRACEGATE_CONFIG", "").strip()
    if not config_file:
        return env, {}
    values, tables = _read_toml(config_file, problems)
    return {**values, **env}, tables


def _read_toml(path: str, problems: list[str]) -> tuple[dict[str, str], Tables]:
    """The file's top-level values as environment strings, and its [tasks] and
    [upstreams] tables."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as error:
        problems.append(f"TRACEGATE_CONFIG: cannot read {path}: {error.strerror}")
        return {}, {}
    except tomllib.TOMLDecodeError as error:
        problems.append(f"TRACEGATE_CONFIG: {path} is not valid TOML: {error}")
        return {}, {}
    tables = {name: {str(k): str(v) for k, v in (data.get(name) or {}).items()} for name in _TABLES}
    values: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            continue  # tables: [tasks] and [upstreams] are read above
        if isinstance(value, bool):
            values[key] = "true" if value else "false"
        elif isinstance(value, list):
            values[key] = ",".join(str(v) for v in value)
        else:
            values[key] = str(value)
    return values, tables
