"""`tracegate serve` as a subprocess for the viewer tests, and `tracegate worker --burst`.

Owns ``serve()``: a context manager that starts ``tracegate serve --workers 1`` (the
console script next to ``sys.executable``) on the given port with only the environment
it is handed, waits for ``/healthz``, yields a ``Served`` and stops the process group.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TRACEGATE = str(Path(sys.executable).with_name("tracegate"))
WORKER_SERVICE = "tracegate-worker"
_START_TIMEOUT = 30.0
_WORKER_TIMEOUT = 60.0


class ServeError(RuntimeError):
    """`tracegate serve` exited or did not answer in time; the message holds its log."""


@dataclass(frozen=True)
class Served:
    base_url: str
    env: dict[str, str]
    log: Path

    def worker_burst(self) -> str:
        """Run ``tracegate worker --burst``: every queued job, then exit (spans flushed)."""
        done = subprocess.run(
            [TRACEGATE, "worker", "--burst"],
            env={**self.env, "OTEL_SERVICE_NAME": WORKER_SERVICE},
            capture_output=True,
            text=True,
            timeout=_WORKER_TIMEOUT,
            check=False,
        )
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"tracegate worker --burst failed:\n{output}"
        return output


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status) == 200
    except OSError:
        return False


@contextmanager
def serve(port: int, env: dict[str, str], log: Path) -> Iterator[Served]:
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [TRACEGATE, "serve", "--workers", "1", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + _START_TIMEOUT
        while not _healthy(base + "/healthz"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise ServeError(f"tracegate serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield Served(base, env, log)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
