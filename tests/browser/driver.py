"""Debian's Chromium, driven by the node harness beside this file, for the viewer tests.

Owns ``Browser``: finds ``/usr/bin/chromium`` (a missing one is an error that says to
``apt-get install chromium``: never a skip) and node >= 20, runs ``npm ci`` here when
``node_modules`` is missing or holds another playwright-core than ``package.json`` pins
(no browser is downloaded: playwright-core only drives the given executable), then
``visit()`` runs ``node drive.mjs`` once - one headless Chromium with a fresh profile -
and returns what each page showed as JSON facts for the test to assert on.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.peers.base import PeerUnavailableError
from tests.peers.node import find_node, npm_ci

HARNESS_DIR = Path(__file__).resolve().parent
CHROMIUM = Path("/usr/bin/chromium")
_DRIVE_TIMEOUT = 300.0

Facts = dict[str, Any]


def find_chromium(path: Path = CHROMIUM) -> str:
    if not os.access(path, os.X_OK):
        raise PeerUnavailableError(
            f"{path} is missing: the trace viewer's browser tests run Debian's Chromium. "
            "Install it with `apt-get install chromium` (.ci/run does this on CI)."
        )
    return str(path)


def ensure_installed(harness_dir: Path = HARNESS_DIR) -> None:
    """``npm ci`` when playwright-core is missing or is not the version package.json pins."""
    pinned = json.loads((harness_dir / "package.json").read_text())["dependencies"][
        "playwright-core"
    ]
    installed = harness_dir / "node_modules" / "playwright-core" / "package.json"
    if installed.is_file() and json.loads(installed.read_text()).get("version") == pinned:
        return
    npm_ci(harness_dir, installed)


@dataclass(frozen=True)
class Visit:
    """One page to open; see drive.mjs for what each option makes the harness do."""

    name: str
    path: str
    screenshot: Path | None = None
    full_page: bool = True
    spans: tuple[str, ...] = ()
    copy: bool = False
    expand: str = ""

    def plan(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "screenshot": str(self.screenshot) if self.screenshot else "",
            "full_page": self.full_page,
            "spans": list(self.spans),
            "copy": self.copy,
            "expand": self.expand,
        }


class Browser:
    """Headless Chromium through playwright-core; one fresh profile per ``visit`` call."""

    def __init__(self, harness_dir: Path = HARNESS_DIR) -> None:
        self.harness_dir = harness_dir
        self.chromium = find_chromium()
        self.node = find_node("the browser tests")
        ensure_installed(harness_dir)

    def visit(self, base_url: str, visits: list[Visit], profile: Path) -> dict[str, Facts]:
        """Open each page in order; the facts of each visit, by name."""
        profile.mkdir(parents=True, exist_ok=True)
        plan = {
            "chromium": self.chromium,
            "profile": str(profile),
            "base_url": base_url,
            "visits": [visit.plan() for visit in visits],
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith("PLAYWRIGHT_")}
        done = subprocess.run(
            [self.node, "drive.mjs"],
            cwd=self.harness_dir,
            input=json.dumps(plan),
            capture_output=True,
            text=True,
            env=env,
            timeout=_DRIVE_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"node drive.mjs failed ({done.returncode}):\n{done.stderr[-3000:]}")
        visited: dict[str, Facts] = json.loads(done.stdout)["visits"]
        return visited
