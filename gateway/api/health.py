"""`/healthz` (the process answers) and `/readyz` (what it depends on answers)."""

from __future__ import annotations

import flask
import sentry_sdk
from sentry_sdk.tracing_utils import has_tracing_enabled

from gateway import redisconn
from gateway.errors import error_response

__all__ = ["blueprint"]

blueprint = flask.Blueprint("health", __name__)


@blueprint.get("/healthz")
def healthz() -> flask.Response:
    return flask.jsonify({"status": "ok"})


@blueprint.get("/readyz")
def readyz() -> flask.Response:
    settings = flask.current_app.extensions["tracegate.settings"]
    # Not a readiness condition, but what `tracegate doctor` must see from outside:
    # sentry-sdk's own tracing beside OpenTelemetry starts a second trace.
    client = sentry_sdk.get_client()
    checks: dict[str, str] = {
        "sentry_tracing": "on"
        if client.is_active() and has_tracing_enabled(client.options)
        else "off"
    }
    if settings.redis_url:
        import redis

        try:
            redisconn.connect(settings.redis_url, connect_timeout=1.0, timeout=1.0).ping()
            checks["redis"] = "ok"
        except (redis.RedisError, OSError) as error:
            checks["redis"] = f"unreachable: {type(error).__name__}"
            return error_response(503, "not_ready", "redis is unreachable")
    return flask.jsonify({"status": "ready", "checks": checks})
