"""`tracegate up`: the gateway, one worker and (without `REDIS_URL`) an embedded Redis.

Everything runs as child processes in sessions of their own, so Ctrl-C reaches only
this supervisor, which stops them in order — gateway and worker first (each finishes
what it is doing and flushes its telemetry), Redis last — and leaves no orphans.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

from gateway.embedded import EmbeddedRedis
from gateway.progress import wait_until
from gateway.settings import Settings, configured

__all__ = ["run_up"]

_STOP_TIMEOUT_S = 20.0


def _tracegate() -> str:
    beside = Path(sys.executable).with_name("tracegate")
    return str(beside) if beside.exists() else "tracegate"


class _Children:
    def __init__(self) -> None:
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, args: list[str], env: Mapping[str, str]) -> None:
        self.processes[name] = subprocess.Popen(args, env=dict(env), start_new_session=True)

    def exited(self) -> str | None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                return name
        return None

    def stop(self) -> None:
        for process in self.processes.values():
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()
            # Whatever the leader left behind in its session goes too: an rq work horse
            # runs in a process group of its own, so only the session finds it.
            _kill_session(process.pid)


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def _kill_session(session_id: int) -> None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            if os.getsid(pid) == session_id:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            continue


def _wait_ready(url: str, children: _Children, out: TextIO, timeout_s: float = 30.0) -> bool:
    def answers() -> bool:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    return wait_until(
        answers,
        out,
        "the gateway and the worker",
        timeout_s,
        give_up=lambda: children.exited() is not None,
        interval=0.1,
    )


def _short(path: Path) -> str:
    """The path as the user would type it: relative when under the current folder."""
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)


def _describe(settings: Settings, embedded: EmbeddedRedis | None, base: str, out: TextIO) -> None:
    telemetry = settings.telemetry
    if embedded is not None:
        redis_line = f"embedded, data in {_short(embedded.data_dir)}"
    else:
        redis_line = urlsplit(settings.redis).netloc.rpartition("@")[2] or settings.redis
    sentry = urlsplit(telemetry.sentry_dsn).hostname if telemetry.sentry_dsn else None
    lines = [
        "tracegate is up",
        f"  gateway  {base}",
        f"  traces   {base}/traces",
        f"  redis    {redis_line}",
        f"  sentry   {sentry or 'no DSN: events are kept in the local trace store'}",
        f"  otlp     {telemetry.otlp_url() if telemetry.otlp_enabled else 'off'}",
        "",
        "Try a job that continues your trace:",
        f"  curl -s {base}/v1/jobs -H 'content-type: application/json' \\",
        "    -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' \\",
        """    -d '{"task": "echo", "args": ["hello"]}'""",
        f"then open {base}/traces/4bf92f3577b34da6a3ce929d0e0e4736",
        "Ctrl-C stops everything.",
    ]
    print("\n".join(lines), file=out, flush=True)


def run_up(settings: Settings, environ: Mapping[str, str], out: TextIO = sys.stdout) -> int:
    env = dict(environ)
    given = configured(environ)  # the environment and the TOML file win over up's defaults
    defaults = {
        "TRACEGATE_DEMO_TASKS": "1",
        # Spans reach the local trace store (and a collector) within a second, not five.
        "OTEL_BSP_SCHEDULE_DELAY": "500",
    }
    env.update({k: v for k, v in defaults.items() if k not in given})
    stopping = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    # Signals are ours before anything starts: a Ctrl-C at any moment stops it all.
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # SIGHUP: the terminal closed
    previous = {s: signal.signal(s, request_stop) for s in handled}
    embedded = None
    children = _Children()
    status = 0
    try:
        if not settings.redis_url:
            embedded = EmbeddedRedis(Path(settings.data_dir).resolve())
            print(f"starting the embedded Redis in {_short(embedded.data_dir)} ...", file=out)
            embedded.start()
            env["REDIS_URL"] = embedded.url
        host, port = settings.host, str(settings.port)
        children.start(
            "gateway",
            [_tracegate(), "serve", "--host", host, "--port", port, "--workers", "1"],
            env,
        )
        worker_env = {**env}
        if "OTEL_SERVICE_NAME" not in given:
            worker_env["OTEL_SERVICE_NAME"] = "tracegate-worker"
        queues = [arg for name in settings.queues for arg in ("--queue", name)]
        children.start("worker", [_tracegate(), "worker", *queues], worker_env)
        base = f"http://{host}:{port}"
        if not stopping and not _wait_ready(base, children, out):
            print(f"tracegate: the gateway did not become ready on {base}", file=sys.stderr)
            return 1
        if not stopping:
            _describe(settings, embedded, base, out)
        while not stopping:
            dead = children.exited()
            if dead is not None:
                print(f"tracegate: the {dead} stopped unexpectedly; stopping", file=sys.stderr)
                status = 1
                break
            time.sleep(0.2)
        print("stopping ...", file=out, flush=True)
    finally:
        children.stop()
        if embedded is not None:
            embedded.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    print("stopped.", file=out, flush=True)
    return status
