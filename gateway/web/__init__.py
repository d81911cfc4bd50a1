"""The trace viewer: two static pages that read the traces API from the browser.

``blueprint`` (no URL prefix) serves

* ``GET /traces`` - recent traces (``static/traces.html``), from ``GET /v1/traces``;
* ``GET /traces/<trace_id>`` - one trace's waterfall (``static/trace.html``), from
  ``GET /v1/traces/<trace_id>``; the id is 32 hex digits or the UUID spelling;
* ``GET /traces/assets/<file>`` - the one stylesheet and the one ES module they load.

The pages are plain files: no build step, no framework and nothing from outside this
origin. They carry no inline script or style, so every response of this blueprint is
sent with ``Content-Security-Policy: default-src 'self'`` (plus the directives that
``default-src`` does not cover). Everything the API returns is rendered as text.
"""

from __future__ import annotations

import re

import flask

__all__ = ["CONTENT_SECURITY_POLICY", "blueprint"]

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_TRACE_ID = re.compile(r"[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

blueprint = flask.Blueprint(
    "web", __name__, static_folder="static", static_url_path="/traces/assets"
)


@blueprint.get("/traces")
def traces() -> flask.Response:
    return blueprint.send_static_file("traces.html")


@blueprint.get("/traces/<trace_id>")
def trace(trace_id: str) -> flask.Response:
    if _TRACE_ID.fullmatch(trace_id.lower()) is None:
        flask.abort(404, description="not a trace id: use 32 hex digits or the UUID spelling")
    return blueprint.send_static_file("trace.html")


@blueprint.after_request
def _secure(response: flask.Response) -> flask.Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
