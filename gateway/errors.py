"""The JSON error envelope: `{"error": {"code", "message", "trace_id"}}` for every 4xx/5xx.

Unexpected exceptions become a 500 envelope, are recorded on the server span and
reported to Sentry once (the handler captures them, so Flask's own signal, and with
it sentry-sdk's Flask integration, never sees a second copy).
"""

from __future__ import annotations

import logging

import flask
import sentry_sdk
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode
from sentry_sdk.integrations.logging import ignore_logger
from werkzeug.exceptions import HTTPException

import otel

__all__ = ["ApiError", "error_response", "register_errors"]

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error the API means to return, with its status and stable code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def error_response(status: int, code: str, message: str) -> flask.Response:
    body = {"error": {"code": code, "message": message, "trace_id": otel.current_trace_id_hex()}}
    response = flask.jsonify(body)
    response.status_code = status
    return response


def _code_for(error: HTTPException) -> str:
    name = (error.name or "error").lower()
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")


def register_errors(app: flask.Flask) -> None:
    # The handler reports to Sentry itself; its log line must not become a second event.
    ignore_logger(logger.name)

    @app.errorhandler(ApiError)
    def api_error(error: ApiError) -> flask.Response:
        response = error_response(error.status, error.code, error.message)
        if error.status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="tracegate"'
        return response

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> flask.Response:
        status = error.code or 500
        response = error_response(status, _code_for(error), error.description or error.name)
        if status == 405 and error.valid_methods:  # type: ignore[attr-defined]
            response.headers["Allow"] = ", ".join(error.valid_methods)  # type: ignore[attr-defined]
        return response

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> flask.Response:
        span = trace.get_current_span()
        span.record_exception(error)
        span.set_attribute("error.type", type(error).__qualname__)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        sentry_sdk.capture_exception(error)
        logger.error("unhandled %s: %s", type(error).__name__, error)
        return error_response(500, "internal_error", "the server failed to handle the request")
