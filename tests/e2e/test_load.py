"""Load: requests that each enqueue a job, through `tracegate serve --workers 2` and two
forking `tracegate worker`s. Every job finishes, every consumer span and error event
carries its request's trace id, no span is an orphan.

`make test` sends TRACEGATE_LOAD_REQUESTS=300 (the default); `make soak` sends 2,000.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from rq.job import Job

from tests.harness import kill_session
from tests.peers import EnvelopeReceiver, OTLPReceiver

ROOT = Path(__file__).resolve().parents[2]
TRACEGATE = str(Path(sys.executable).with_name("tracegate"))
REQUESTS = int(os.environ.get("TRACEGATE_LOAD_REQUESTS", "300"))
FAIL_EVERY = 10  # every tenth job fails, so error events are part of the load


def _post(url: str, body: dict[str, object], traceparent: str) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "traceparent": traceparent},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture
def deployment(
    free_port: int,
    redis_url: str,
    envelope_receiver: EnvelopeReceiver,
    otlp_receiver: OTLPReceiver,
) -> Iterator[str]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "REDIS_URL": redis_url,
        "SENTRY_DSN": envelope_receiver.dsn,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "TRACEGATE_DEMO_TASKS": "1",
        "TRACEGATE_DEMO_ROUTES": "0",
    }
    processes = [
        subprocess.Popen(
            [TRACEGATE, "serve", "--port", str(free_port), "--workers", "2", "--threads", "4"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        ),
        *(
            subprocess.Popen(
                [TRACEGATE, "worker", "--worker-class", "fork"],
                env={**env, "OTEL_SERVICE_NAME": "tracegate-worker"},
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            for _ in range(2)
        ),
    ]
    base = f"http://127.0.0.1:{free_port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline or processes[0].poll() is not None:
            for process in processes:
                kill_session(process.pid)
            pytest.fail("tracegate serve did not become ready")
        time.sleep(0.1)
    try:
        yield base
    finally:
        for process in processes:
            kill_session(process.pid)
            process.wait(timeout=10)


def test_every_job_of_a_load_keeps_its_requests_trace(
    deployment: str,
    redis_url: str,
    envelope_receiver: EnvelopeReceiver,
    otlp_receiver: OTLPReceiver,
) -> None:
    def submit(n: int) -> tuple[str, str, bool]:
        trace_id = secrets.token_hex(16)
        failing = n % FAIL_EVERY == 0
        status, body = _post(
            deployment + "/v1/jobs",
            {"task": "fail" if failing else "echo", "args": [n]},
            f"00-{trace_id}-{secrets.token_hex(8)}-01",
        )
        assert status == 202, body
        assert body["trace_id"] == trace_id
        return str(body["job_id"]), trace_id, failing

    with ThreadPoolExecutor(max_workers=8) as pool:
        jobs = list(pool.map(submit, range(REQUESTS)))

    with redis.Redis.from_url(redis_url) as connection:
        deadline = time.monotonic() + 60 + REQUESTS * 0.1
        pending = {job_id for job_id, _, _ in jobs}
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                status = Job.fetch(job_id, connection=connection).get_status()
                if str(getattr(status, "value", status)) in ("finished", "failed"):
                    pending.discard(job_id)
            time.sleep(0.5)
        assert not pending, f"{len(pending)} of {REQUESTS} jobs never ended"
        for job_id, _, failing in jobs:
            status = Job.fetch(job_id, connection=connection).get_status()
            assert str(getattr(status, "value", status)) == ("failed" if failing else "finished")

    # Every job's consumer span, exactly one (each job ran once), in its request's trace.
    received = otlp_receiver.wait_for_spans(
        lambda s: s.kind_name == "CONSUMER", REQUESTS, timeout=60
    )
    consumers = {s.attributes["messaging.message.id"]: s for s in received}
    assert len(consumers) == len(received) == REQUESTS
    for job_id, trace_id, _ in jobs:
        assert consumers[job_id].trace_id_hex == trace_id
    # No orphans: every span's parent is a span that arrived too, or the request's caller.
    spans = otlp_receiver.spans
    known = {s.span_id_hex for s in spans}
    callers = {s.parent_span_id_hex for s in spans if s.kind_name == "SERVER"}
    orphans = [
        s for s in spans if s.parent_span_id_hex and s.parent_span_id_hex not in known | callers
    ]
    assert orphans == []
    # Every failing job's Sentry error, linked to its request's trace.
    failing_traces = {trace_id for _, trace_id, failing in jobs if failing}
    deadline = time.monotonic() + 30
    while True:
        errors = [e for e in envelope_receiver.events() if "exception" in e]
        linked = {e["contexts"]["trace"]["trace_id"] for e in errors}
        if failing_traces <= linked or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert failing_traces - linked == set()
    assert len(errors) == len(failing_traces)  # exactly one error per failing job
    # Still one consumer span per job now that everything has arrived.
    assert len([s for s in otlp_receiver.spans if s.kind_name == "CONSUMER"]) == REQUESTS
    # And no process of the deployment dropped a span. (Sentry events may be counted as
    # dropped: every error arrived, as asserted above, but at 100 % sampling sentry-sdk's
    # 100-envelope queue can overflow with transactions, one HTTP request each.)
    with urllib.request.urlopen(deployment + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    losses = [
        line
        for line in metrics.splitlines()
        if line.startswith("tracegate_spans_dropped_total") and float(line.rsplit(" ", 1)[1]) > 0
    ]
    assert losses == [], losses
