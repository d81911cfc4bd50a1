"""The per-job cost of tracing in a forking RQ worker, flush included.

Scenarios, each `jobs` trivial jobs run by a real `rq worker --burst` subprocess:

- plain      rq's own Worker and Job, no telemetry: the baseline;
- handoff    TracedWorker (the default): the work horse hands its spans to the
             worker process through Redis; the worker exports them to a live local
             OTLP receiver and sends the Sentry transactions, off the job's path;
- flush      TRACEGATE_RQ_EXPORT=flush: each work horse exports its own spans and
             sends its own transaction before it exits;
- dead       handoff with the collector and Sentry on a closed port
             (TRACEGATE_RQ_FLUSH_TIMEOUT_S=0.05).

Prints milliseconds per job in the worker's steady state and the ratio to the baseline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import redis
from rq import Queue
from rq.job import Job

from bench.receivers import keep_alive
from otel.rq import TracedQueue
from tests.peers.base import free_port
from tests.peers.envelope import EnvelopeReceiver
from tests.peers.otlp import OTLPReceiver
from tests.peers.redis import RedisServer

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
JOB = "tests.jobs.functions.traced_echo"


def _work(env: dict[str, str], args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(args, env=env, cwd=ROOT, check=True, capture_output=True, timeout=600)
    return time.perf_counter() - started


def _scenario(url: str, jobs: int, traced: bool, env: dict[str, str]) -> float:
    """Seconds per job in the worker's steady state.

    From the first job's start to the last job's end, as rq recorded them, divided by
    the jobs in between: the worker's start-up and exit are not counted, each job's
    fork, run and flush (and the parent taking over its spans) are.
    """
    connection = redis.Redis.from_url(url)
    connection.flushall()
    queue = (TracedQueue if traced else Queue)("default", connection=connection)
    for i in range(jobs):
        queue.enqueue(JOB, str(i))
    if traced:
        args = [str(BIN / "rq"), "worker", "--burst", "--url", url, "-w", "otel.rq.TracedWorker"]
    else:
        args = [str(BIN / "rq"), "worker", "--burst", "--url", url]
    ids = [job.id for job in queue.get_jobs()]
    _work(env, [*args, "default"])
    assert connection.llen("rq:queue:default") == 0
    done = [Job.fetch(job_id, connection=connection) for job_id in ids]
    first = min(job.started_at for job in done if job.started_at)
    last = max(job.ended_at for job in done if job.ended_at)
    return (last - first).total_seconds() / (jobs - 1)


def run(jobs: int) -> None:
    base_env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}
    dead = f"http://127.0.0.1:{free_port()}"
    with RedisServer() as server, OTLPReceiver() as otlp, EnvelopeReceiver() as sentry:
        keep_alive(otlp)
        keep_alive(sentry)
        live_env = {
            **base_env,
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
            "SENTRY_DSN": sentry.dsn,
        }
        flush_env = {**live_env, "TRACEGATE_RQ_EXPORT": "flush"}
        dead_env = {
            **base_env,
            "OTEL_EXPORTER_OTLP_ENDPOINT": dead,
            "SENTRY_DSN": dead.replace("http://", "http://k@") + "/1",
            "TRACEGATE_RQ_FLUSH_TIMEOUT_S": "0.05",
        }
        results = {
            "plain": _scenario(server.url, jobs, False, base_env),
            "handoff": _scenario(server.url, jobs, True, live_env),
            "flush": _scenario(server.url, jobs, True, flush_env),
            "dead": _scenario(server.url, jobs, True, dead_env),
        }
        exported = len([s for s in otlp.spans if s.kind_name == "CONSUMER"])
        assert exported == 2 * jobs, f"{exported} consumer spans exported, expected {2 * jobs}"
    baseline = results["plain"]
    print(f"rq forking worker, {jobs} jobs per scenario (consumer spans exported: {exported})")
    print(f"{'scenario':<10}{'ms/job':>10}{'x plain':>10}{'+ms/job':>10}")
    for name, per_job in results.items():
        print(
            f"{name:<10}{per_job * 1000:>10.2f}{per_job / baseline:>10.2f}"
            f"{(per_job - baseline) * 1000:>10.2f}"
        )
