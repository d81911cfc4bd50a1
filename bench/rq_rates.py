"""RQ enqueue and processing rates (jobs/s): plain rq, sentry-sdk's RqIntegration, tracegate.

What is measured, for `jobs` trivial jobs (`noop` below) per run:

- **enqueue rate**: jobs / the summed wall time of the `enqueue` calls, in a fresh
  process per run. Each traced enqueue happens inside a span of its own (a SERVER span
  for tracegate, a transaction for Sentry), as it would inside a request; that span is
  started and ended outside the timed call, the PRODUCER span (tracegate) or the trace
  headers in `job.meta` (Sentry) are inside it. Background exports run meanwhile and
  compete for the CPU, as they would in a real process.
- **processing rate**: a real `rq worker --burst` subprocess drains the queue; the rate
  is (jobs - 1) / (last job's `ended_at` - first job's `started_at`), as rq recorded
  them, so the worker's start-up and exit are not counted, and every job's fork (for
  `Worker`), run, flush or handoff, and the worker's taking over of spans are. Every
  worker reads this module as its rq settings (`-c bench.rq_rates`), so the job's
  module is imported once, before any fork, and no work horse imports it.
- **worker CPU**: user + system time of the worker, its threads and its work horses
  over the same window (sampled from `/proc` every 20 ms), per job. The machine is
  small: whatever a variant makes the worker, Redis and the receivers (in this
  process) compute competes for the same cores.

Variants, each for rq's forking `Worker` and for `SimpleWorker`:

- **plain**   rq's `Queue` and `rq worker -w rq.Worker|rq.SimpleWorker`, no telemetry;
- **sentry**  sentry-sdk's native tracing: `sentry_sdk.init(dsn=<local envelope
  receiver>, traces_sample_rate=1.0, integrations=[RqIntegration()])` — sentry-sdk's
  default integrations stay on, Redis's among them — in the enqueuing process and in
  the worker, whose classes `SentryWorker` / `SentrySimpleWorker` below call it in
  `__init__` (rq 3's command line has no Sentry option);
- **tracegate** `TracedQueue` to enqueue, `rq worker -w otel.rq.TracedWorker|
  otel.rq.TracedSimpleWorker -j otel.rq.TracedJob`, exporting to a live local OTLP
  receiver, with Sentry transactions going to the local envelope receiver.

Runs are interleaved (plain, sentry, tracegate, plain, ...) over rounds to cancel
machine drift; the tables show medians. The receivers count what arrived, against
what each variant should have sent, so a variant that drops data is visible.

    python -m bench.rq_rates [--quick]
"""

from __future__ import annotations

# A work horse runs `noop` from this module: only what an rq worker has loaded anyway
# is imported at the top.
import os
import sys
import time
from pathlib import Path
from typing import Any

from rq import SimpleWorker, Worker

__all__ = ["SentrySimpleWorker", "SentryWorker", "noop", "run"]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
JOB = "bench.rq_rates.noop"
QUEUE = "default"
REQUEST = "POST /v1/jobs"  # the enqueuing span's name, in every traced variant
VARIANTS = ("plain", "sentry", "tracegate")
WORKER_CLASSES = ("Worker", "SimpleWorker")
# Issue 6's targets: traced processing as a share of plain rq's jobs/s.
TARGETS = {"Worker": 0.90, "SimpleWorker": 0.80}

_WORKER_ARGS = {
    ("plain", "Worker"): ["-w", "rq.Worker"],
    ("plain", "SimpleWorker"): ["-w", "rq.SimpleWorker"],
    ("sentry", "Worker"): ["-w", "bench.rq_rates.SentryWorker"],
    ("sentry", "SimpleWorker"): ["-w", "bench.rq_rates.SentrySimpleWorker"],
    ("tracegate", "Worker"): ["-w", "otel.rq.TracedWorker", "-j", "otel.rq.TracedJob"],
    ("tracegate", "SimpleWorker"): ["-w", "otel.rq.TracedSimpleWorker", "-j", "otel.rq.TracedJob"],
}


def noop(value: str) -> str:
    """The trivial job."""
    return value


def _init_sentry() -> None:
    """sentry-sdk's own RQ tracing, set up the way its documentation shows."""
    import sentry_sdk
    from sentry_sdk.integrations.rq import RqIntegration

    sentry_sdk.init(
        dsn=os.environ["SENTRY_DSN"], traces_sample_rate=1.0, integrations=[RqIntegration()]
    )


class SentryWorker(Worker):
    """rq's forking Worker with sentry-sdk's RqIntegration."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _init_sentry()
        super().__init__(*args, **kwargs)


class SentrySimpleWorker(SimpleWorker):
    """rq's SimpleWorker with sentry-sdk's RqIntegration."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _init_sentry()
        super().__init__(*args, **kwargs)


# -- the enqueuing process (`python -m bench.rq_rates --enqueue VARIANT`) ------------


def _enqueue(variant: str, url: str, jobs: int) -> float:
    """Enqueue `jobs` jobs; the seconds spent inside the enqueue calls."""
    import redis
    from rq import Queue

    connection = redis.Redis.from_url(url)
    spent = 0.0
    if variant == "plain":
        queue = Queue(QUEUE, connection=connection)
        for i in range(jobs):
            started = time.perf_counter()
            queue.enqueue(JOB, str(i))
            spent += time.perf_counter() - started
    elif variant == "sentry":
        import sentry_sdk

        _init_sentry()
        queue = Queue(QUEUE, connection=connection)
        for i in range(jobs):
            with sentry_sdk.start_transaction(op="http.server", name=REQUEST):
                started = time.perf_counter()
                queue.enqueue(JOB, str(i))
                spent += time.perf_counter() - started
        sentry_sdk.flush(timeout=30)
    else:
        from opentelemetry.trace import SpanKind

        import otel
        from otel.rq import TracedQueue

        telemetry = otel.setup()
        tracer = telemetry.tracer("bench.rq_rates")
        queue = TracedQueue(QUEUE, connection=connection)
        for i in range(jobs):
            with tracer.start_as_current_span(REQUEST, kind=SpanKind.SERVER):
                started = time.perf_counter()
                queue.enqueue(JOB, str(i))
                spent += time.perf_counter() - started
        telemetry.flush(30)
    return spent


# -- the benchmark ------------------------------------------------------------------


class _Run:
    """One run of one variant: rates, CPU, and what the receivers got."""

    def __init__(self, variant: str, worker: str, values: dict[str, float]) -> None:
        self.variant, self.worker, self.values = variant, worker, values

    def __getitem__(self, name: str) -> float:
        return self.values[name]


class _Peers:
    """Redis and the two receivers, shared by every run."""

    def __init__(self, url: str, otlp: Any, sentry: Any) -> None:
        self.url, self.otlp, self.sentry = url, otlp, sentry

    def env(self, variant: str) -> dict[str, str]:
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}
        if variant in ("sentry", "tracegate"):
            env["SENTRY_DSN"] = self.sentry.dsn
        if variant == "tracegate":
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.otlp.endpoint
            env["OTEL_SERVICE_NAME"] = "bench-rq"
        return env

    def received(self) -> dict[str, float]:
        spans = self.otlp.spans
        transactions = self.sentry.transactions()
        requests = sum(1 for t in transactions if t.get("transaction") == REQUEST)
        return {
            "spans": len(spans),
            "consumer_spans": sum(1 for s in spans if s.kind_name == "CONSUMER"),
            "request_transactions": requests,
            "job_transactions": len(transactions) - requests,
            "errors": len(self.sentry.events()),
        }


def _check(args: list[str], env: dict[str, str], timeout: float) -> str:
    import subprocess

    done = subprocess.run(
        args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        output = done.stderr[-3000:] + done.stdout[-1000:]
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}:\n{output}")
    return done.stdout


def proc_stat(path: str) -> list[str] | None:
    """The fields of a `/proc/<pid>[/task/<tid>]/stat` after the command name (so
    index 7 is minflt, 11 utime, 13 cutime), or None once the process is gone."""
    try:
        with open(path) as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _process_cpu_s(pid: int) -> float | None:
    """CPU seconds of a process, its threads and the children it has reaped."""
    fields = proc_stat(f"/proc/{pid}/stat")
    if fields is None:
        return None
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _work(args: list[str], env: dict[str, str]) -> list[tuple[float, float]]:
    """Run a burst worker; (wall clock, its CPU seconds) every 20 ms while it ran."""
    import subprocess
    import tempfile

    samples: list[tuple[float, float]] = []
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(args, env=env, cwd=ROOT, stdout=log, stderr=log)
        deadline = time.monotonic() + 1200
        while process.poll() is None and time.monotonic() < deadline:
            cpu = _process_cpu_s(process.pid)
            if cpu is not None:
                samples.append((time.time(), cpu))
            time.sleep(0.02)
        if process.poll() is None:
            process.kill()
        if process.wait() != 0:
            log.seek(0)
            output = log.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"{' '.join(args)} exited {process.returncode}:\n{output}")
    return samples


def _cpu_at(samples: list[tuple[float, float]], moment: float) -> float:
    """The worker's CPU seconds at `moment`, interpolated between two samples."""
    before = max((s for s in samples if s[0] <= moment), default=samples[0])
    after = min((s for s in samples if s[0] >= moment), default=samples[-1])
    if after[0] == before[0]:
        return before[1]
    share = (moment - before[0]) / (after[0] - before[0])
    return before[1] + share * (after[1] - before[1])


def enqueue_fresh(peers: _Peers, variant: str, jobs: int) -> str:
    """Empty Redis and the receivers, then enqueue `jobs` jobs the variant's way in a
    process of its own; its output (the last line: the seconds spent enqueueing)."""
    import redis

    with redis.Redis.from_url(peers.url) as connection:
        connection.flushall()
    peers.otlp.clear()
    peers.sentry.clear()
    return _check(
        [sys.executable, "-m", "bench.rq_rates", "--enqueue", variant, "--url", peers.url,
         "--jobs", str(jobs)],
        peers.env(variant),
        timeout=600,
    )  # fmt: skip


def worker_command(url: str, variant: str, worker: str, queue: str = QUEUE) -> list[str]:
    """`rq worker --burst` with the variant's classes, on `queue`."""
    return [str(BIN / "rq"), "worker", "--burst", "--url", url, "-c", "bench.rq_rates",
            *_WORKER_ARGS[(variant, worker)], queue]  # fmt: skip


def _one_run(peers: _Peers, variant: str, worker: str, jobs: int) -> _Run:
    import json

    import redis
    from rq.job import Job, JobStatus

    connection = redis.Redis.from_url(peers.url)
    env = peers.env(variant)
    out = enqueue_fresh(peers, variant, jobs)
    spent = float(json.loads(out.strip().splitlines()[-1])["enqueue_s"])
    ids = [i.decode() for i in connection.lrange(f"rq:queue:{QUEUE}", 0, -1)]
    if len(ids) != jobs:
        raise RuntimeError(f"{variant}: {len(ids)} jobs queued, expected {jobs}")
    samples = _work(worker_command(peers.url, variant, worker), env)
    done = [job for job in Job.fetch_many(ids, connection=connection) if job is not None]
    finished = sum(1 for job in done if job.get_status(refresh=False) == JobStatus.FINISHED)
    first = min(_utc(job.started_at) for job in done if job.started_at)
    last = max(_utc(job.ended_at) for job in done if job.ended_at)
    window = last - first
    cpu = _cpu_at(samples, last) - _cpu_at(samples, first)
    # Both processes flushed before they exited; a moment for the last request a
    # receiver may still be reading.
    time.sleep(0.2)
    values = {
        "enqueue_per_s": jobs / spent,
        "process_per_s": (jobs - 1) / window,
        "cpu_ms_per_job": cpu * 1000 / (jobs - 1),
        "finished": finished,
        **peers.received(),
    }
    return _Run(variant, worker, values)


def _utc(moment: Any) -> float:
    """Seconds since the epoch of a datetime rq recorded (naive ones are UTC)."""
    from datetime import timezone

    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return float(moment.timestamp())


def _expected(variant: str, jobs: int) -> dict[str, int]:
    """What a variant should deliver for `jobs` jobs."""
    if variant == "tracegate":
        # SERVER + PRODUCER from the enqueuer, CONSUMER from the worker; one Sentry
        # transaction per local segment: the request's and the job's.
        return {"spans": 3 * jobs, "consumer_spans": jobs, "transactions": jobs}
    if variant == "sentry":
        return {"spans": 0, "consumer_spans": 0, "transactions": jobs}
    return {"spans": 0, "consumer_spans": 0, "transactions": 0}


def _versions() -> str:
    import platform
    import subprocess
    from importlib.metadata import version

    redis_server = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.split()
    server = next((w.split("=", 1)[1] for w in redis_server if w.startswith("v=")), "?")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    names = ("rq", "redis", "sentry-sdk", "opentelemetry-sdk")
    parts = [f"Python {platform.python_version()}", *(f"{n} {version(n)}" for n in names)]
    return ", ".join([*parts, f"redis-server {server}", f"tracegate {commit or '?'}"])


def run(quick: bool, jobs: int | None = None) -> list[str]:
    """Measure every variant, interleaved over rounds; Markdown lines of the results.
    `jobs` overrides the mode's number of jobs per run."""
    from bench.receivers import keep_alive
    from tests.peers.envelope import EnvelopeReceiver
    from tests.peers.otlp import OTLPReceiver
    from tests.peers.redis import RedisServer

    default_jobs, rounds = (120, 2) if quick else (5000, 3)
    jobs = jobs or default_jobs
    runs: list[_Run] = []
    began = time.monotonic()
    with RedisServer() as server, OTLPReceiver() as otlp, EnvelopeReceiver() as sentry:
        keep_alive(otlp)  # as collectors and Sentry do: no TCP connect per export
        keep_alive(sentry)
        peers = _Peers(server.url, otlp, sentry)
        for round_no in range(1, rounds + 1):
            for worker in WORKER_CLASSES:
                for variant in VARIANTS:
                    result = _one_run(peers, variant, worker, jobs)
                    runs.append(result)
                    print(
                        f"rq_rates: round {round_no}/{rounds} {worker:<12} {variant:<9} "
                        f"enqueue {result['enqueue_per_s']:6.0f}/s, process "
                        f"{result['process_per_s']:6.0f}/s, {result['cpu_ms_per_job']:.1f} "
                        f"CPU ms/job; spans {result['spans']:.0f}, transactions "
                        f"{result['request_transactions'] + result['job_transactions']:.0f} "
                        f"({time.monotonic() - began:.0f}s)",
                        file=sys.stderr,
                    )
    return _report(runs, jobs, rounds, quick)


def _median(runs: list[_Run], name: str, variant: str, worker: str | None = None) -> float:
    import statistics

    values = [
        r[name] for r in runs if r.variant == variant and (worker is None or r.worker == worker)
    ]
    return statistics.median(values) if values else 0.0


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}" if base else "-"


def _round_ratios(runs: list[_Run], variant: str, worker: str) -> list[float]:
    """Each round's processing rate over plain rq's in the same round.

    The machine drifts between rounds (plain rq alone has ranged 33-52 jobs/s over
    one run); a variant and plain rq run next to each other in a round, so their
    ratio cancels most of it, which a ratio of two medians does not.
    """
    mine = [r for r in runs if r.variant == variant and r.worker == worker]
    plain = [r for r in runs if r.variant == "plain" and r.worker == worker]
    return [
        m["process_per_s"] / p["process_per_s"]
        for m, p in zip(mine, plain, strict=True)
        if p["process_per_s"]
    ]


def _report(runs: list[_Run], jobs: int, rounds: int, quick: bool) -> list[str]:
    import statistics
    from datetime import datetime, timezone

    command = "python -m bench.rq_rates" + (" --quick" if quick else "")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## RQ: enqueue and processing rates",
        "",
        f"`{command}`: {jobs} trivial jobs per run, {rounds} interleaved rounds, medians; "
        f"{stamp}; {os.cpu_count()} CPUs; {_versions()}.",
        "",
        "Enqueue (a fresh process per run; each enqueue inside a request-like span):",
        "",
        "| variant | enqueue jobs/s | x plain |",
        "|---|---:|---:|",
    ]
    plain_enqueue = _median(runs, "enqueue_per_s", "plain")
    for variant in VARIANTS:
        rate = _median(runs, "enqueue_per_s", variant)
        lines.append(f"| {variant} | {rate:,.0f} | {_ratio(rate, plain_enqueue)} |")
    lines += [
        "",
        "Processing (`rq worker --burst`, first job's start to last job's end; CPU of the "
        "worker and its work horses; x plain: the median of the rounds' ratios to plain rq "
        "in the same round):",
        "",
        "| worker | variant | jobs/s | x plain | x plain, each round | worker CPU ms/job "
        "| target |",
        "|---|---|---:|---:|---|---:|---|",
    ]
    for worker in WORKER_CLASSES:
        for variant in VARIANTS:
            rate = _median(runs, "process_per_s", variant, worker)
            cpu = _median(runs, "cpu_ms_per_job", variant, worker)
            ratios = _round_ratios(runs, variant, worker)
            ratio = statistics.median(ratios) if ratios else 0.0
            each = ", ".join(f"{r:.2f}" for r in ratios)
            target = ""
            if variant == "tracegate":
                wanted = TARGETS[worker]
                target = f">= {wanted:.2f}: {'met' if ratio >= wanted else 'missed'}"
            lines.append(
                f"| {worker} | {variant} | {rate:,.0f} | {ratio:.2f} | {each} | {cpu:.1f} "
                f"| {target} |"
            )
    lines += [
        "",
        "What arrived, the fewest over the rounds (expected in brackets). Transactions "
        "are counted apart for the enqueuing process (`request`) and the worker (`job`):",
        "",
        "| worker | variant | jobs finished | OTLP spans | of them CONSUMER "
        "| request transactions | job transactions | Sentry errors |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for worker in WORKER_CLASSES:
        for variant in VARIANTS:
            mine = [r for r in runs if r.variant == variant and r.worker == worker]
            want = _expected(variant, jobs)

            def fewest(name: str, runs: list[_Run] = mine) -> int:
                return int(min(r[name] for r in runs))

            errors = int(max(r["errors"] for r in mine))
            lines.append(
                f"| {worker} | {variant} | {fewest('finished')} ({jobs}) "
                f"| {fewest('spans')} ({want['spans']}) "
                f"| {fewest('consumer_spans')} ({want['consumer_spans']}) "
                f"| {fewest('request_transactions')} ({want['transactions']}) "
                f"| {fewest('job_transactions')} ({want['transactions']}) | {errors} (0) |"
            )
    return lines


def main() -> None:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m bench.rq_rates")
    parser.add_argument("--quick", action="store_true", help="fewer jobs and rounds")
    parser.add_argument("--enqueue", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.enqueue:  # the enqueuing process of one run
        print(json.dumps({"enqueue_s": _enqueue(args.enqueue, args.url, args.jobs)}))
        return
    print("\n".join(run(args.quick)))


if __name__ == "__main__":
    main()
