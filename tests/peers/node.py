"""Node.js for the test harnesses written in JavaScript (Spotlight, the browser driver).

Owns finding node >= 20 and running `npm ci` in a harness folder whose node_modules
are missing or stale; a machine without them fails the tests with a clear message.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from .base import PeerUnavailableError

MIN_NODE_MAJOR = 20
_NPM_CI_TIMEOUT = 600.0


def find_node(purpose: str) -> str:
    """Path of node >= 20; PeerUnavailableError (naming `purpose`) otherwise."""
    node = shutil.which("node")
    if node is None:
        raise PeerUnavailableError(f"node is not on PATH: {purpose} need node >= {MIN_NODE_MAJOR}")
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.strip()
    match = re.match(r"v(\d+)\.", version)
    if match is None or int(match[1]) < MIN_NODE_MAJOR:
        raise PeerUnavailableError(f"{node} is {version}: {purpose} need node >= {MIN_NODE_MAJOR}")
    return node


def npm_ci(harness_dir: Path, installed: Path) -> None:
    """`npm ci` in `harness_dir`; afterwards `installed` (a package.json) must exist."""
    npm = shutil.which("npm")
    if npm is None:
        raise PeerUnavailableError(f"npm is not on PATH: cannot install {harness_dir}")
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=harness_dir,
        capture_output=True,
        text=True,
        timeout=_NPM_CI_TIMEOUT,
        check=False,
    )
    if done.returncode != 0 or not installed.is_file():
        output = (done.stdout + done.stderr)[-2000:]
        raise RuntimeError(f"npm ci in {harness_dir} failed ({done.returncode}):\n{output}")
