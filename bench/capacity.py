"""Capacity: what one gateway process and one worker carry here, and how they add up.

- Workers: N trivial traced jobs (`TracedQueue`, enqueued inside a span) drained by 1, 2
  and 4 `tracegate worker --burst` processes (forking, handing spans over, exporting to
  a live local OTLP receiver) on one real redis-server. jobs/s is N over the time from
  the first job's start to the last job's end as rq recorded them (the workers' start-up
  is not counted); the receiver must have N consumer spans.
- Gateways: `POST /v1/jobs` (an echo job each, traced, acknowledged once Redis has it)
  against `tracegate serve` with 1 and 2 gunicorn worker processes (4 threads each), for
  a fixed time from 8 keep-alive client processes on loopback; requests/s, p50/p99.

`python -m bench.capacity [--quick]`; run by `make bench`. On a 2-core machine more than
two processes of one kind share the cores with each other and with Redis.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from bench.load import python_load
from bench.receivers import keep_alive

if TYPE_CHECKING:
    from tests.peers.otlp import OTLPReceiver

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
JOB = "tests.jobs.functions.traced_echo"
CLIENTS = 8


def _log(message: str) -> None:
    print(f"[capacity] {message}", file=sys.stderr, flush=True)


def _env(redis_url: str, otlp: OTLPReceiver) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "HOME": os.environ.get("HOME", "/tmp"),
        "REDIS_URL": redis_url,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint,
        "OTEL_SERVICE_NAME": "tracegate-capacity",
        "TRACEGATE_STORE": "0",
        "TRACEGATE_DEMO_TASKS": "1",
    }


def _workers(redis_url: str, otlp: OTLPReceiver, count: int, jobs: int) -> float:
    """jobs/s of `count` workers draining `jobs` traced jobs."""
    import redis
    from rq.job import Job

    from otel.rq import TracedQueue

    connection = redis.Redis.from_url(redis_url)
    connection.flushall()
    otlp.clear()
    queue = TracedQueue("default", connection=connection)
    ids = [job.id for job in queue.enqueue_many(
        TracedQueue.prepare_data(JOB, (str(i),)) for i in range(jobs)
    )]  # fmt: skip
    env = _env(redis_url, otlp)
    processes = [
        subprocess.Popen(
            [str(BIN / "tracegate"), "worker", "--burst"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    for process in processes:
        process.wait(timeout=600)
    done = [Job.fetch(job_id, connection=connection) for job_id in ids]
    first = min(job.started_at for job in done if job.started_at)
    last = max(job.ended_at for job in done if job.ended_at)
    otlp.wait_for_spans(lambda s: s.kind_name == "CONSUMER", jobs, timeout=60)
    return jobs / (last - first).total_seconds()


def _gateway(
    redis_url: str, otlp: OTLPReceiver, processes: int, seconds: float
) -> dict[str, float]:
    from tests.peers.base import free_port

    port = free_port()
    env = {**_env(redis_url, otlp), "TRACEGATE_LOG_FORMAT": "json"}
    server = subprocess.Popen(
        [str(BIN / "tracegate"), "serve", "--port", str(port), "--workers", str(processes),
         "--threads", "4"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("tracegate serve did not start") from None
                time.sleep(0.1)
        body = json.dumps({"task": "echo", "args": ["x"]})
        load = python_load(
            f"http://127.0.0.1:{port}/v1/jobs", seconds, CLIENTS, "POST", body, expect=202
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "rps": load.requests / seconds,
        "p50": load.p50_ms,
        "p99": load.p99_ms,
        "errors": load.errors,
    }


def run(quick: bool) -> list[str]:
    import redis

    from tests.peers.otlp import OTLPReceiver
    from tests.peers.redis import RedisServer

    jobs = 300 if quick else 1000
    seconds = 3.0 if quick else 10.0
    repeats = 1 if quick else 2
    worker_counts = (1, 2, 4)
    rates: dict[int, list[float]] = {n: [] for n in worker_counts}
    gateways: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    with RedisServer() as server, OTLPReceiver() as otlp:
        keep_alive(otlp)
        for repeat in range(repeats):  # interleaved: 1 2 4 1 2 4 ...
            for count in worker_counts:
                _log(f"round {repeat + 1}: {count} worker(s), {jobs} jobs")
                rates[count].append(_workers(server.url, otlp, count, jobs))
            for processes in gateways:
                _log(f"round {repeat + 1}: gateway with {processes} process(es), {seconds:g} s")
                redis.Redis.from_url(server.url).flushall()
                gateways[processes].append(_gateway(server.url, otlp, processes, seconds))
    one_worker = statistics.median(rates[1])
    lines = [
        f"### Capacity ({'quick' if quick else 'full'} mode)",
        "",
        f"Traced forking workers draining {jobs:,} trivial jobs (median of {repeats}):",
        "",
        "| workers | jobs/s | per worker | x one worker |",
        "|---:|---:|---:|---:|",
    ]
    for count in worker_counts:
        rate = statistics.median(rates[count])
        lines.append(f"| {count} | {rate:,.0f} | {rate / count:,.0f} | {rate / one_worker:.2f} |")
    lines += [
        "",
        f"`POST /v1/jobs` through `tracegate serve --threads 4`, {CLIENTS} clients, "
        f"{seconds:g} s (median of {repeats}):",
        "",
        "| gateway processes | requests/s | per process | p50 ms | p99 ms | errors |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for processes, results in gateways.items():
        best = sorted(results, key=lambda r: r["rps"])[len(results) // 2]
        lines.append(
            f"| {processes} | {best['rps']:,.0f} | {best['rps'] / processes:,.0f} | "
            f"{best['p50']:.1f} | {best['p99']:.1f} | {best['errors']:.0f} |"
        )
    lines += [
        "",
        f"`python -m bench.capacity{' --quick' if quick else ''}`, {os.cpu_count()} cores, "
        f"{datetime.date.today().isoformat()}.",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity")
    parser.add_argument("--quick", action="store_true")
    print("\n".join(run(parser.parse_args().quick)))


if __name__ == "__main__":
    main()
