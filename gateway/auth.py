"""Bearer API keys (`TRACEGATE_API_KEYS`): when set, the job and trace routes need one."""

from __future__ import annotations

import hashlib
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
    # Digests of equal length, and every key compared: the time taken tells neither
    # how long a key is nor which one matched.
    presented = hashlib.sha256(token.strip().encode()).digest()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented, hashlib.sha256(key.encode()).digest())
    if scheme.lower() != "bearer" or not matched:
        raise ApiError(401, "unauthorized", "a valid bearer API key is required")
