"""Sentry's scope for one WSGI request, without sentry-sdk's WSGI middleware.

sentry-sdk's Flask integration wraps every Flask app's `__call__` in its WSGI
middleware. Per request that forks the scopes, tracks a release-health session,
copies the request's URL, headers and environment into an event processor whether or
not an event is ever captured, sets scope attributes and wraps the response in a
re-scoping iterator: about 70 µs of a request Flask serves in 45. For an app that
`otel.flask.instrument_flask` instrumented, the app calls its WSGI app directly
(`direct_calls`) and `request_scope` does the same job:

- a fresh isolation scope per request (its tags, user and breadcrumbs stay with it);
- a request-mode session, only when the client has a release (sentry-sdk makes one
  for every request and discards it without one);
- the request's method, URL, query string, headers and server name and port, by
  sentry-sdk's own event processor (its filtering of sensitive headers and its
  data-collection options), made only when an event is captured.

sentry-sdk's Flask signal handlers still run: unhandled exceptions are captured, the
route names the transaction, Flask's request data (cookies only with PII) is added.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import sentry_sdk

__all__ = ["direct_calls", "request_scope"]

try:  # sentry-sdk's own request description; without it events carry Flask's only
    from sentry_sdk.integrations.wsgi import _make_wsgi_event_processor
except ImportError:  # pragma: no cover - another sentry-sdk
    _make_wsgi_event_processor = None  # type: ignore[assignment]

try:
    from sentry_sdk.sessions import track_session as _track_session
except ImportError:  # pragma: no cover - another sentry-sdk
    _track_session = None  # type: ignore[assignment]


def _describe_request(environ: dict[str, Any]) -> Callable[[Any, Any], Any]:
    def process(event: Any, hint: Any) -> Any:
        if _make_wsgi_event_processor is None:
            return event
        return _make_wsgi_event_processor(environ, False)(event, hint)

    return process


@contextmanager
def request_scope(environ: dict[str, Any]) -> Iterator[None]:
    """The request's own Sentry scope, if Sentry is on."""
    client = sentry_sdk.get_client()
    if not client.is_active():
        yield
        return
    with sentry_sdk.isolation_scope() as scope:
        scope.clear_breadcrumbs()
        scope.add_event_processor(_describe_request(environ))
        sessions = _track_session is not None and client.options.get("release")
        with _track_session(scope, session_mode="request") if sessions else nullcontext():
            yield


def _call_wsgi_app(app: Any, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    return app.wsgi_app(environ, start_response)


_direct_classes: dict[type, type] = {}


def _direct_class(cls: type) -> type:
    direct = _direct_classes.get(cls)
    if direct is None:
        namespace = {"__call__": _call_wsgi_app, "__module__": cls.__module__}
        direct = _direct_classes[cls] = type(cls.__name__, (cls,), namespace)
    return direct


def direct_calls(app: Any) -> None:
    """Calls of `app` go straight to its `wsgi_app`, as `Flask.__call__` does, past
    the WSGI middleware sentry-sdk puts into `Flask.__call__`."""
    cls = type(app)
    if cls.__call__ is not _call_wsgi_app:
        app.__class__ = _direct_class(cls)
