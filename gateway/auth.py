"""Bearer API keys (`TRACEGATE_API_KEYS`): when set, the job and trace routes need one."""

from __future__ import annotations

import hmac

import flask

from gateway.errors import ApiError

__all__ = ["require_api_key"]


def require_api_key() -> None:
    """A `before_request` hook: 401 unless the request carries a configured key."""
    keys = flask.current_app.extensions["tracegate.settings"].api_keys
    if not keys:
        return
    scheme, _, token = flask.request.headers.get("Authorization", "").partition(" ")
    presented = token.strip().encode()
    if scheme.lower() != "bearer" or not any(
        hmac.compare_digest(presented, key.encode()) for key in keys
    ):
        raise ApiError(401, "unauthorized", "a valid bearer API key is required")
