"""An in-process gateway for tests, wired to whatever peers the environment names."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import flask

import otel
from gateway.app import create_app
from gateway.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
TRACEGATE = str(Path(sys.executable).with_name("tracegate"))


@dataclass
class Gateway:
    app: flask.Flask
    client: flask.testing.FlaskClient
    telemetry: otel.Telemetry

    def flush(self) -> None:
        assert self.telemetry.flush(5.0), "telemetry did not flush within 5 s"


GatewayFactory = Callable[..., Gateway]


@contextmanager
def gateways(base_env: dict[str, str]) -> Iterator[GatewayFactory]:
    """Yield a factory of gateways; their telemetry is shut down afterwards."""
    started: list[Gateway] = []

    def make(**env: str) -> Gateway:
        environ = {
            "OTEL_SERVICE_NAME": "tracegate-test",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            # The local trace store needs a Redis: tests that have one turn it on.
            "TRACEGATE_STORE": "1" if "REDIS_URL" in {**base_env, **env} else "0",
        }
        app = create_app(Settings.from_env({**environ, **base_env, **env}))
        gateway = Gateway(app, app.test_client(), app.extensions["tracegate.telemetry"])
        started.append(gateway)
        return gateway

    try:
        yield make
    finally:
        for gateway in started:
            gateway.app.extensions["tracegate.counters"].stop()  # it would go on writing
            gateway.telemetry.shutdown(timeout_s=2.0)


def start_worker(
    env: dict[str, str], *args: str, cwd: Path = ROOT, stdout: int | IO[Any] = subprocess.PIPE
) -> subprocess.Popen[str]:
    """`tracegate worker ARGS` in a session of its own (`kill_session` takes its work
    horses too), its output on `stdout`."""
    return subprocess.Popen(
        [TRACEGATE, "worker", *args],
        # A worker that hangs is made to show where: SIGABRT dumps every thread's stack.
        env={**env, "PYTHONFAULTHANDLER": "1"},
        cwd=cwd,
        stdout=stdout,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def output_within(process: subprocess.Popen[str], timeout: float, what: str) -> str:
    """The output of `process` once it has exited; one that is still running after
    `timeout` seconds is aborted (its threads' stacks are in the failure) and fails."""
    import signal

    import pytest

    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # PYTHONFAULTHANDLER: the worker and its work horses print their stacks, and exit.
        kill_session(process.pid, signal.SIGABRT)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        kill_session(process.pid)  # its work horses and scheduler hold the pipe open
        output, _ = process.communicate()
        pytest.fail(f"{what} within {timeout:.0f} s; its output:\n{output[-8000:]}")
    return output


def kill_session(session_id: int, signum: int = 9) -> None:
    """SIGKILL (or `signum`) every process of a session: a worker started with
    `start_new_session` and its work horses, which rq puts in process groups of their own."""
    import os

    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.getsid(int(entry)) == session_id:
                os.kill(int(entry), signum)
        except (ProcessLookupError, PermissionError):
            continue


def tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 (openssl's command line)."""
    names = ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt")
    ca_key, ca, key, csr, cert = (folder / name for name in names)
    extensions = folder / "san.cnf"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    for args in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca,
         "-days", "1", "-subj", "/CN=tracegate test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr,
         "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "1", "-extfile", extensions],
    ):  # fmt: skip
        subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)
    return ca, cert, key
