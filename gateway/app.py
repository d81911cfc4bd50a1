"""`create_app(settings)`: the gateway's Flask factory."""

from __future__ import annotations

import flask

import otel
from gateway.api import demo, health
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
    app.register_blueprint(health.blueprint)
    if settings.demo_routes:
        app.register_blueprint(demo.blueprint)
    return app
