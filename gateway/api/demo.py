"""Demo routes (on unless `TRACEGATE_DEMO_ROUTES=0`): a Sentry message and a Sentry error.

`GET /example` captures the message "Example route accessed"; `GET /example/error`
raises, so Sentry receives an error linked to the request's trace.
"""

from __future__ import annotations

import flask
import sentry_sdk

import otel

__all__ = ["blueprint"]

blueprint = flask.Blueprint("demo", __name__)


class ExampleError(RuntimeError):
    """Raised on purpose by `/example/error`."""


@blueprint.get("/example")
def example() -> flask.Response:
    event_id = sentry_sdk.capture_message("Example route accessed")
    return flask.jsonify(
        {
            "message": "Example route accessed",
            "trace_id": otel.current_trace_id_hex(),
            "trace_id_uuid": otel.current_trace_id_uuid(),
            "sentry_event_id": event_id,
        }
    )


@blueprint.get("/example/error")
def example_error() -> flask.Response:
    raise ExampleError("Example error: this route always fails")
