"""Settings from the environment: ecosystem names, every problem listed at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from gateway.settings import Settings
from otel.config import ConfigError, TelemetryConfig
from otel.semconv import sentry_op, sentry_status

TRACEGATE = str(Path(sys.executable).with_name("tracegate"))


def test_defaults_work_with_an_empty_environment() -> None:
    settings = Settings.from_env({})
    assert settings.telemetry.service_name == "tracegate"
    assert settings.telemetry.sentry_environment == "development"
    assert not settings.telemetry.sentry_enabled and not settings.telemetry.otlp_enabled
    assert settings.telemetry.sampler == "parentbased_always_on"


def test_every_bad_value_is_listed_in_one_error() -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(
            {
                "OTEL_TRACES_SAMPLER": "sometimes",
                "OTEL_TRACES_SAMPLER_ARG": "lots",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318",
                "SENTRY_DSN": "not a dsn",
                "TRACEGATE_PORT": "http",
                "TRACEGATE_INBOUND_SAMPLED": "maybe",
                "REDIS_URL": "localhost:6379",
                "TRACEGATE_SENTRY_PIPELINE": "0",
                "TRACEGATE_REDIS_WAIT_REPLICAS": "-1",
            }
        )
    text = str(raised.value)
    for name in (
        "OTEL_TRACES_SAMPLER:",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "SENTRY_DSN",
        "TRACEGATE_PORT",
        "TRACEGATE_INBOUND_SAMPLED",
        "REDIS_URL",
        "TRACEGATE_SENTRY_PIPELINE",
        "TRACEGATE_REDIS_WAIT_REPLICAS",
    ):
        assert name in text
    assert len(raised.value.problems) == 9


def test_propagators_that_are_not_installed_are_refused() -> None:
    with pytest.raises(ConfigError, match="OTEL_PROPAGATORS: xray not installed"):
        Settings.from_env({"OTEL_PROPAGATORS": "tracecontext,baggage,xray"})
    assert Settings.from_env({"OTEL_PROPAGATORS": "tracecontext,baggage"})


def test_non_finite_numbers_are_refused() -> None:
    with pytest.raises(ConfigError) as raised:
        Settings.from_env(
            {
                "TRACEGATE_PORT": "nan",
                "TRACEGATE_FLUSH_TIMEOUT_S": "inf",
                "OTEL_TRACES_SAMPLER_ARG": "nan",
            }
        )
    assert len(raised.value.problems) == 3
    assert all("finite" in problem for problem in raised.value.problems)


def test_otlp_endpoints_follow_the_otel_rules() -> None:
    base = TelemetryConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"})
    assert base.otlp_url() == "http://c:4318/v1/traces"
    specific = TelemetryConfig.from_env(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:9999/custom",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2500",
            "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s%3Dcret,x=1",
        }
    )
    assert specific.otlp_url() == "http://t:9999/custom"
    assert specific.otlp_timeout_s == 2.5
    assert dict(specific.otlp_headers) == {"api-key": "s=cret", "x": "1"}
    grpc = TelemetryConfig.from_env(
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    )
    assert grpc.otlp_url() == "http://c:4317"


def test_toml_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    path = tmp_path / "tracegate.toml"
    path.write_text('OTEL_SERVICE_NAME = "from-file"\nTRACEGATE_PORT = 9000\n')
    settings = Settings.from_env({"TRACEGATE_CONFIG": str(path), "TRACEGATE_PORT": "9100"})
    assert settings.telemetry.service_name == "from-file"
    assert settings.port == 9100
    path.write_text("not = [toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Settings.from_env({"TRACEGATE_CONFIG": str(path)})


def test_keyword_overrides_are_validated() -> None:
    config = TelemetryConfig().with_overrides(service_name="api", sampler="always_off")
    assert (config.service_name, config.sampler) == ("api", "always_off")
    with pytest.raises(ConfigError, match="unknown setting"):
        TelemetryConfig().with_overrides(colour="blue")
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER_ARG"):
        TelemetryConfig().with_overrides(sampler_arg=2.0)


def test_cli_exits_2_listing_every_problem() -> None:
    result = subprocess.run(
        [TRACEGATE, "serve"],
        env={"OTEL_TRACES_SAMPLER": "sometimes", "TRACEGATE_WORKERS": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "OTEL_TRACES_SAMPLER" in result.stderr and "TRACEGATE_WORKERS" in result.stderr


@pytest.mark.parametrize(
    ("kind", "attributes", "op", "status"),
    [
        (SpanKind.SERVER, {"http.method": "GET", "http.status_code": 201}, "http.server", "ok"),
        (
            SpanKind.SERVER,
            {"http.request.method": "GET", "http.response.status_code": 404},
            "http.server",
            "not_found",
        ),
        (
            SpanKind.CLIENT,
            {"http.request.method": "POST", "http.response.status_code": 503},
            "http.client",
            "unavailable",
        ),
        (
            SpanKind.PRODUCER,
            {"messaging.system": "rq", "messaging.operation.type": "send"},
            "queue.publish",
            "ok",
        ),
        (
            SpanKind.CONSUMER,
            {"messaging.system": "rq", "messaging.operation.type": "process"},
            "queue.process",
            "ok",
        ),
        (SpanKind.CLIENT, {"db.system.name": "redis"}, "db", "ok"),
        (SpanKind.INTERNAL, {}, "function", "ok"),
    ],
)
def test_old_and_stable_semantic_conventions_map_to_sentry(
    kind: SpanKind, attributes: dict[str, object], op: str, status: str
) -> None:
    assert sentry_op(kind, attributes) == op
    assert sentry_status(StatusCode.UNSET, attributes) == status


def test_error_status_without_http_code_is_internal_error() -> None:
    assert sentry_status(StatusCode.ERROR, {}) == "internal_error"
