"""The real Spotlight sidecar (node) as a test peer for sentry-sdk's ``spotlight=`` option.

Owns ``SpotlightSidecar``: makes sure the node harness in ``tests/interop/spotlight``
is installed (``npm ci`` when ``node_modules`` is missing), starts ``node start.mjs
PORT`` (the sidecar through its library API, bound to 127.0.0.1) in its own process
group, subscribes to the sidecar's ``GET /stream`` server-sent events before any test
sends, turns each ``application/x-sentry-envelope`` event (data: the sidecar's parsed
``[headers, [[item_headers, payload], ...]]`` JSON) into an ``Envelope`` and offers
the same ``events()`` / ``transactions()`` / ``wait_for()`` API as ``EnvelopeReceiver``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

from .base import LOOPBACK, PeerContext, free_port
from .envelope import EnvelopeInbox, envelope_from_json
from .node import find_node, npm_ci

HARNESS_DIR = Path(__file__).resolve().parent.parent / "interop" / "spotlight"
ENVELOPE_EVENT = "application/x-sentry-envelope"
SSE = "text/event-stream"
_READY = re.compile(rb"^SPOTLIGHT READY http://127\.0\.0\.1:(\d+)\s*$")
_START_ATTEMPTS = 3
_READY_TIMEOUT = 30.0


def ensure_installed(harness_dir: Path = HARNESS_DIR) -> None:
    """Run ``npm ci`` in the harness when its node_modules are missing (a fresh checkout)."""
    marker = harness_dir / "node_modules" / "@spotlightjs" / "spotlight" / "package.json"
    if not marker.is_file():
        npm_ci(harness_dir, marker)


class SpotlightSidecar(EnvelopeInbox, PeerContext):
    """Pass ``.url`` as ``sentry_sdk.init(spotlight=...)``; read what the sidecar streams."""

    def __init__(self, harness_dir: Path = HARNESS_DIR) -> None:
        super().__init__()
        self.harness_dir = harness_dir
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._stream: http.client.HTTPConnection | None = None
        self._reader: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def url(self) -> str:
        """The sidecar's envelope endpoint, the value for sentry-sdk's ``spotlight`` option."""
        return self.base_url + "/stream"

    def start(self) -> None:
        if self._process is not None:
            return
        node = find_node("the Spotlight interop tests")
        ensure_installed(self.harness_dir)
        errors: list[str] = []
        for _ in range(_START_ATTEMPTS):  # the free port can be taken before node binds it
            error = self._launch(node, free_port())
            if error is None:
                break
            errors.append(error)
        else:
            raise RuntimeError("Spotlight sidecar did not start:\n" + "\n".join(errors))
        try:
            self._subscribe()
        except BaseException:
            self.stop()
            raise

    def _launch(self, node: str, port: int) -> str | None:
        stderr = tempfile.TemporaryFile(prefix="spotlight-stderr-")  # noqa: SIM115 - kept open until stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SENTRY_", "SPOTLIGHT_"))}
        process = subprocess.Popen(
            [node, "start.mjs", str(port)],
            cwd=self.harness_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            start_new_session=True,
        )
        assert process.stdout is not None
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline and process.poll() is None:
            ready, _, _ = select.select([process.stdout], [], [], 0.1)
            if not ready:
                continue
            match = _READY.match(process.stdout.readline())
            if match is not None:
                self._process, self._stderr, self.port = process, stderr, int(match[1])
                return None
        _kill_group(process)
        stderr.seek(0)
        log = stderr.read().decode(errors="replace")[-1500:]
        stderr.close()
        return f"port {port}: exit {process.returncode}, stderr:\n{log}"

    def _subscribe(self) -> None:
        """Open ``GET /stream``; once its headers arrive the sidecar has subscribed us."""
        conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=10)
        conn.request("GET", "/stream?client=tracegate-tests", headers={"Accept": SSE})
        response = conn.getresponse()
        if response.status != 200:
            raise RuntimeError(f"GET {self.url} answered {response.status} {response.reason}")
        assert conn.sock is not None
        conn.sock.settimeout(None)
        self._stream = conn
        self._reader = threading.Thread(
            target=self._read_events, args=(response,), name="spotlight-sse", daemon=True
        )
        self._reader.start()

    def _read_events(self, response: http.client.HTTPResponse) -> None:
        event = ""
        data: list[str] = []
        try:
            for raw in iter(response.readline, b""):
                line = raw.decode("utf-8").rstrip("\r\n")
                if not line:
                    self._dispatch(event, data)
                    event, data = "", []
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "event":
                    event = value
                elif name == "data":
                    data.append(value)
        except (OSError, http.client.HTTPException, ValueError):
            pass  # the stream is closed on stop()

    def _dispatch(self, event: str, data: list[str]) -> None:
        if event.split(";", 1)[0] != ENVELOPE_EVENT or not data:
            return
        try:
            self._add(envelope_from_json(json.loads("\n".join(data))))
        except (ValueError, TypeError, KeyError) as exc:
            self._reject(f"SSE {event}: {exc}")

    def stop(self) -> None:
        conn, self._stream = self._stream, None
        if conn is not None and conn.sock is not None:
            with contextlib.suppress(OSError):  # EOF for the reader thread
                conn.sock.shutdown(socket.SHUT_RDWR)
        process, self._process = self._process, None
        if process is not None:
            _kill_group(process)
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        if conn is not None:
            conn.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the sidecar's process group, SIGKILL it if it lingers."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        if process.poll() is not None:
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
    if process.stdout is not None:
        process.stdout.close()
