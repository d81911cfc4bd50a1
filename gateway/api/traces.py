"""`GET /v1/traces` and `GET /v1/traces/<trace_id>`: the local trace store as JSON.

A trace id is accepted in either spelling (32 hex or UUID). These routes get no
server span of their own (see `Settings`), so looking at traces does not make more.
"""

from __future__ import annotations

import re

import flask
import redis

from gateway.auth import require_api_key
from gateway.errors import ApiError
from gateway.store import TraceStore
from otel import ids

__all__ = ["blueprint"]

blueprint = flask.Blueprint("traces", __name__)
blueprint.before_request(require_api_key)


def _store() -> TraceStore:
    store = flask.current_app.extensions.get("tracegate.store")
    if store is None:
        raise ApiError(404, "store_disabled", "the local trace store is off (TRACEGATE_STORE=0)")
    return store


@blueprint.get("/v1/traces")
def recent() -> flask.Response:
    limit = flask.request.args.get("limit", "50")
    if not re.fullmatch(r"[0-9]{1,4}", limit) or not 1 <= int(limit) <= 1000:
        raise ApiError(400, "invalid_arguments", "'limit' must be 1-1000")
    try:
        traces = _store().recent(int(limit))
    except (redis.RedisError, OSError) as error:
        raise ApiError(503, "store_unavailable", "the trace store cannot be reached") from error
    return flask.jsonify({"traces": traces})


@blueprint.get("/v1/traces/<trace_id>")
def one(trace_id: str) -> flask.Response:
    parsed = ids.parse_x_trace_id(trace_id)
    if parsed is None:
        raise ApiError(404, "trace_not_found", "no trace with that id")
    try:
        found = _store().trace(ids.trace_id_hex(parsed))
    except (redis.RedisError, OSError) as error:
        raise ApiError(503, "store_unavailable", "the trace store cannot be reached") from error
    if found is None:
        raise ApiError(404, "trace_not_found", "no trace with that id")
    return flask.jsonify(found)
