"""`create_app(settings)`: the gateway's Flask factory."""

from __future__ import annotations

import flask
import redis

import otel
from gateway.api import demo, health, jobs
from gateway.errors import register_errors
from gateway.settings import Settings

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> flask.Flask:
    """Build the gateway; telemetry is set up here, once per process, never at import."""
    settings = settings or Settings.from_env()
    telemetry = otel.setup(settings.telemetry)
    app = flask.Flask("tracegate")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["tracegate.settings"] = settings
    app.extensions["tracegate.telemetry"] = telemetry
    otel.instrument_flask(app, telemetry)
    register_errors(app)
    app.extensions["tracegate.tasks"] = settings.registry()
    app.extensions["tracegate.redis"] = redis.Redis.from_url(
        settings.redis_url or "redis://127.0.0.1:6379/0",
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
    )
    app.register_blueprint(health.blueprint)
    app.register_blueprint(jobs.blueprint)
    if settings.demo_routes:
        app.register_blueprint(demo.blueprint)
    return app
