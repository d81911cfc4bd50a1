"""`create_app(settings)`: the gateway's Flask factory."""

from __future__ import annotations

import flask

import otel
from gateway import metrics, web
from gateway.api import demo, health, jobs, proxy, traces
from gateway.errors import register_errors
from gateway.logconfig import log_requests
from gateway.settings import Settings
from gateway.telemetry import connect, counter_board, start_telemetry

__all__ = ["create_app"]


def create_app(settings: Settings | None = None) -> flask.Flask:
    """Build the gateway; telemetry is set up here, once per process, never at import."""
    settings = settings or Settings.from_env()
    connection = connect(settings)
    telemetry, store = start_telemetry(settings)
    app = flask.Flask("tracegate")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.extensions["tracegate.settings"] = settings
    app.extensions["tracegate.telemetry"] = telemetry
    otel.instrument_flask(app, telemetry)
    log_requests(app)
    register_errors(app)
    app.extensions["tracegate.tasks"] = settings.registry()
    app.extensions["tracegate.redis"] = connection
    app.extensions["tracegate.counters"] = counter_board(settings, telemetry)
    if store is not None:
        app.extensions["tracegate.store"] = store
    app.register_blueprint(health.blueprint)
    app.register_blueprint(metrics.blueprint)
    app.register_blueprint(jobs.blueprint)
    app.register_blueprint(proxy.blueprint)
    app.register_blueprint(traces.blueprint)
    app.register_blueprint(web.blueprint)
    if settings.demo_routes:
        app.register_blueprint(demo.blueprint)
    return app
