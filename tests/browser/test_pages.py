"""The viewer's pages as served, without a browser: strict CSP, no inline code, nothing
from outside the origin, no HTML built from strings."""

from __future__ import annotations

import re
from pathlib import Path

import flask
import pytest

from gateway import web

STATIC = Path(web.__file__).resolve().parent / "static"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def client() -> flask.testing.FlaskClient:
    app = flask.Flask("viewer-test")
    app.register_blueprint(web.blueprint)
    return app.test_client()


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/traces", "text/html"),
        (f"/traces/{TRACE}", "text/html"),
        ("/traces/4bf92f35-77b3-4da6-a3ce-929d0e0e4736", "text/html"),
        (f"/traces/{TRACE.upper()}", "text/html"),
        ("/traces/assets/viewer.js", "javascript"),
        ("/traces/assets/viewer.css", "text/css"),
        ("/traces/assets/favicon.svg", "image/svg+xml"),
    ],
)
def test_pages_and_assets_carry_the_csp(
    client: flask.testing.FlaskClient, path: str, content_type: str
) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert content_type in response.content_type
    assert response.headers["Content-Security-Policy"] == web.CONTENT_SECURITY_POLICY
    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize("trace_id", ["nothex", TRACE[:-1], TRACE + "0", "x" * 32])
def test_a_path_that_is_no_trace_id_is_not_found(
    client: flask.testing.FlaskClient, trace_id: str
) -> None:
    response = client.get(f"/traces/{trace_id}")
    assert response.status_code == 404
    assert response.headers["Content-Security-Policy"] == web.CONTENT_SECURITY_POLICY


def test_pages_load_code_only_from_files_of_this_origin() -> None:
    for page in ("traces.html", "trace.html"):
        html = (STATIC / page).read_text()
        scripts = re.findall(r"<script\b[^>]*>", html)
        assert scripts == ['<script type="module" src="/traces/assets/viewer.js">']
        assert re.search(r"<script\b[^>]*>\s*[^<\s]", html) is None  # no inline code
        assert re.search(r"\sstyle\s*=", html) is None and "<style" not in html
        assert re.search(r"\son[a-z]+\s*=", html) is None  # no inline handlers


def test_no_file_names_another_origin() -> None:
    for path in STATIC.iterdir():
        text = path.read_text()
        text = text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # a name, not a fetch
        assert re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I) is None, path.name


def test_script_never_builds_html_from_strings() -> None:
    script = re.sub(r"//.*", "", (STATIC / "viewer.js").read_text())  # code, not comments
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink
    assert 'setAttribute("style"' not in script  # a style attribute would break the CSP
