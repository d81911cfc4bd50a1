"""Fixtures of the trace viewer's browser tests: a real gateway and a real Chromium.

* ``browser``   - ``driver.Browser`` (session): Debian's Chromium via playwright-core;
  a missing ``/usr/bin/chromium`` or node fails the test, it is never skipped
* ``served``    - ``tracegate serve --workers 1`` on a free port and the ``redis_url``
  database, demo routes and demo tasks on; ``.worker_burst()`` runs the queued jobs
* ``artifacts`` - ``test-artifacts/`` at the repository root (git-ignored), where every
  run leaves its screenshots
* ``report_timing`` - note a render time; all of them are printed in the terminal
  summary: reported, never asserted (speed is for benchmarks)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.browser.driver import Browser
from tests.browser.served import Served, ServeError, serve
from tests.peers import PeerUnavailableError

REPO_ROOT = Path(__file__).resolve().parents[2]
_TIMINGS = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def browser() -> Browser:
    try:
        return Browser()
    except PeerUnavailableError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def artifacts() -> Path:
    folder = REPO_ROOT / "test-artifacts"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture
def served(redis_url: str, free_port: int, tmp_path: Path) -> Iterator[Served]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "REDIS_URL": redis_url,
        "TRACEGATE_DEMO_ROUTES": "1",
        "TRACEGATE_DEMO_TASKS": "1",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    try:
        with serve(free_port, env, tmp_path / "tracegate-serve.log") as gateway:
            yield gateway
    except ServeError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def report_timing(request: pytest.FixtureRequest) -> Callable[[str], None]:
    lines = request.config.stash.setdefault(_TIMINGS, [])

    def report(text: str) -> None:
        lines.append(f"{request.node.name}: {text}")

    return report


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = terminalreporter.config.stash.get(_TIMINGS, [])
    if lines:
        terminalreporter.section("trace viewer render timings (reported, not asserted)")
        for line in lines:
            terminalreporter.write_line(line)
