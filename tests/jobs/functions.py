"""Jobs that end in every way a job can end."""

from __future__ import annotations

import os
import signal
import time

from opentelemetry import trace
from rq import Retry


def traced_echo(value: str) -> str:
    """Makes a span of its own inside the job, so the worker's tracer is exercised."""
    with trace.get_tracer("tests.jobs").start_as_current_span("inside the job"):
        return value


def boom(message: str = "boom") -> None:
    raise ValueError(message)


def keep_retrying() -> Retry:
    return Retry(max=2)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def slow(seconds: float) -> None:
    time.sleep(seconds)


def current_baggage() -> dict[str, str]:
    from opentelemetry import baggage

    return {k: str(v) for k, v in baggage.get_all().items() if not k.startswith("sentry-")}


def slow_first_attempt(seconds: float) -> str:
    """Sleeps on its first attempt only (the one a test kills), then succeeds."""
    from rq import get_current_job

    from otel.rq import attempts

    job = get_current_job()
    if job is not None and attempts(job) <= 1:
        time.sleep(seconds)
    return "done"
