"""The `tracegate` command line.

    tracegate up [--host H] [--port P]
    tracegate serve [--host H] [--port P] [--workers N] [--threads N]
    tracegate doctor [--url URL] [--json] [--timeout S]
    tracegate worker [--burst] [--queue NAME ...] [--worker-class fork|simple|spawn|PATH]

Settings come from the environment (see config/example.env); flags override them.
A bad setting prints every problem and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from gateway.logconfig import configure_logging
from gateway.settings import ConfigError, Settings

__all__ = ["main"]


def _version() -> str:
    try:
        return version("tracegate")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracegate",
        description="One trace id from the first header to Sentry and OTLP.",
    )
    parser.add_argument("--version", action="version", version=f"tracegate {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="run the gateway under gunicorn",
        description="Run the gateway under gunicorn; telemetry is set up in each worker.",
    )
    serve.add_argument("--host", help="address to bind (TRACEGATE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (TRACEGATE_PORT, default 8080)")
    serve.add_argument(
        "--workers", type=int, help="worker processes (TRACEGATE_WORKERS, default 2)"
    )
    serve.add_argument(
        "--threads", type=int, help="threads per worker (TRACEGATE_THREADS, default 4)"
    )
    up = commands.add_parser(
        "up",
        help="run the gateway, a worker and (without REDIS_URL) an embedded Redis",
        description="Run everything tracegate needs on this machine, with defaults that "
        "work with nothing configured. Ctrl-C stops it all.",
    )
    up.add_argument("--host", help="address to bind (TRACEGATE_HOST, default 127.0.0.1)")
    up.add_argument("--port", type=int, help="port to bind (TRACEGATE_PORT, default 8080)")
    doctor = commands.add_parser(
        "doctor",
        help="check the configuration, then prove one trace end to end",
        description="Check the configuration this environment gives tracegate, then "
        "send a probe request, job and error to a running gateway and show whether the "
        "server span, the job's spans, the Sentry events and the OTLP export all carry "
        "the probe's trace id. Exit status 1 when the trace is broken.",
    )
    doctor.add_argument(
        "--url", default=None, help="the gateway to probe (default http://HOST:PORT from settings)"
    )
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.add_argument(
        "--timeout",
        type=float,
        default=15.0,
        metavar="S",
        help="how long to wait for each part of the probe trace (default 15)",
    )
    worker = commands.add_parser(
        "worker",
        help="run an RQ worker with the traced classes",
        description="Run an RQ worker whose jobs continue the trace of the request that "
        "enqueued them (REDIS_URL, default redis://127.0.0.1:6379/0; Sentinel URLs too). "
        "When it loses Redis it waits for it and works again; SIGTERM stops it after "
        "the current job and flushes its telemetry.",
    )
    worker.add_argument("--burst", action="store_true", help="quit when the queues are empty")
    worker.add_argument(
        "--queue",
        action="append",
        metavar="NAME",
        help="queue to work on, repeatable (default: default)",
    )
    worker.add_argument(
        "--worker-class",
        default="fork",
        metavar="CLASS",
        help="fork (default), simple, spawn, or a dotted path to an rq worker class",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as error:
        print(f"tracegate: {error}", file=sys.stderr)
        if args.command == "doctor" and args.json:  # still one JSON document on stdout
            configuration = [
                {"name": "Settings", "status": "FAIL", "detail": problem, "fix": ""}
                for problem in error.problems
            ]
            json.dump({"ok": False, "configuration": configuration, "probe": []}, sys.stdout)
            print()
        return 2
    if args.command == "serve":
        overrides = {
            name: getattr(args, name)
            for name in ("host", "port", "workers", "threads")
            if getattr(args, name) is not None
        }
        settings = replace(settings, **overrides)
        problems = settings.problems()
        if problems:
            print(f"tracegate: {ConfigError(problems)}", file=sys.stderr)
            return 2
        configure_logging(settings.log_format)
        return serve(settings)
    if args.command == "doctor":
        from gateway.doctor import run_doctor

        url = (args.url or f"http://{settings.host}:{settings.port}").rstrip("/")
        return run_doctor(settings, url, args.json, args.timeout)
    if args.command == "up":
        from gateway.up import run_up

        overrides = {n: getattr(args, n) for n in ("host", "port") if getattr(args, n) is not None}
        settings = replace(settings, **overrides)
        environ = dict(os.environ)
        environ.update({f"TRACEGATE_{k.upper()}": str(v) for k, v in overrides.items()})
        return run_up(settings, environ)
    if args.command == "worker":
        from gateway.worker import load_worker_class, run_worker

        try:
            load_worker_class(args.worker_class)
        except ValueError as error:
            print(f"tracegate: {error}", file=sys.stderr)
            return 2
        configure_logging(settings.log_format)
        return run_worker(settings, args.queue or ["default"], args.worker_class, args.burst)
    return 2  # argparse rejects unknown commands before this


def serve(settings: Settings) -> int:
    from gunicorn.app.base import BaseApplication

    class Server(BaseApplication):
        def load_config(self) -> None:
            options: dict[str, Any] = {
                "bind": f"{settings.host}:{settings.port}",
                "workers": settings.workers,
                "threads": settings.threads,
                "worker_class": "gthread" if settings.threads > 1 else "sync",
                "proc_name": "tracegate",
                "worker_exit": _worker_exit,
                "graceful_timeout": 10,
            }
            # gunicorn >= 27 opens a control socket under ~/.gunicorn by default.
            if "control_socket_disable" in self.cfg.settings:
                options["control_socket_disable"] = True
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:
            # Called in each worker after the fork: telemetry is set up there.
            from gateway.app import create_app

            return create_app(settings)

    Server().run()
    return 0


def _worker_exit(server: Any, worker: Any) -> None:
    import otel

    telemetry = otel.active()
    if telemetry is not None:
        telemetry.shutdown()


if __name__ == "__main__":
    sys.exit(main())
