"""The gateway's settings: `Settings.from_env(environ)` is the only reader of the environment.

Values come from the environment, over an optional TOML file named by
`TRACEGATE_CONFIG` whose top-level keys are the same variable names
(`OTEL_SERVICE_NAME = "checkout"`). Every bad value is listed in one `ConfigError`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from gateway.store import StoreLimits
from gateway.tasks import DEMO_TASKS, Registry
from otel.config import ConfigError, EnvReader, TelemetryConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["ConfigError", "Settings", "configured"]

_DEFAULT_SERVICE = "tracegate"
_EXCLUDED_URLS = "/healthz,/readyz,/traces,/v1/traces,/static/"


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

    @property
    def redis(self) -> str:
        return self.redis_url or "redis://127.0.0.1:6379/0"

    def registry(self) -> Registry:
        paths = {**(DEMO_TASKS if self.demo_tasks else {}), **self.tasks}
        return Registry.from_paths(paths)[0]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        problems: list[str] = []
        env, tasks = _layered(dict(os.environ if environ is None else environ), problems)
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
            tasks={**tasks, **reader.pairs("TRACEGATE_TASKS")},
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
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            found.append(
                f"REDIS_URL: {self.redis_url!r} is not a redis://, rediss:// or unix:// URL"
            )
        return found


def configured(environ: Mapping[str, str]) -> set[str]:
    """The names the environment or the TOML file set (without tracegate's defaults)."""
    env, _ = _layered(dict(environ), [])
    return set(env)


def _layered(env: dict[str, str], problems: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """The TOML file's values under the environment's, and the file's [tasks] table."""
    config_file = env.get("TRACEGATE_CONFIG", "").strip()
    if not config_file:
        return env, {}
    values, tasks = _read_toml(config_file, problems)
    return {**values, **env}, tasks


def _read_toml(path: str, problems: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    """The file's top-level values as environment strings, and its [tasks] table."""
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as error:
        problems.append(f"TRACEGATE_CONFIG: cannot read {path}: {error.strerror}")
        return {}, {}
    except tomllib.TOMLDecodeError as error:
        problems.append(f"TRACEGATE_CONFIG: {path} is not valid TOML: {error}")
        return {}, {}
    tasks = {str(k): str(v) for k, v in (data.get("tasks") or {}).items()}
    values: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            continue  # tables: [tasks] is read above
        if isinstance(value, bool):
            values[key] = "true" if value else "false"
        elif isinstance(value, list):
            values[key] = ",".join(str(v) for v in value)
        else:
            values[key] = str(value)
    return values, tasks
