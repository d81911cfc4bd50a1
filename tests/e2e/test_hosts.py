"""Workers on several "hosts": two forking workers in sessions of their own, each with its
own environment (host name, service) and its own collector, consume one queue; the jobs
of one request's trace are split between them, and the trace holds across all three
collectors — the gateway's and each worker host's."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel.rq import TracedQueue
from tests.harness import ROOT, gateways, kill_session, start_worker
from tests.peers import OTLPReceiver

HOSTS = ("worker-host-a", "worker-host-b")
JOBS = 16


@pytest.fixture
def collectors() -> Iterator[dict[str, OTLPReceiver]]:
    receivers = {name: OTLPReceiver() for name in ("gateway", *HOSTS)}
    for receiver in receivers.values():
        receiver.start()
    yield receivers
    for receiver in receivers.values():
        receiver.stop()


def test_one_trace_across_workers_on_two_hosts(
    redis_url: str, collectors: dict[str, OTLPReceiver], tmp_path: Path
) -> None:
    gateway_env = {
        "REDIS_URL": redis_url,
        "OTEL_EXPORTER_OTLP_ENDPOINT": collectors["gateway"].endpoint,
        "OTEL_RESOURCE_ATTRIBUTES": "host.name=gateway-host",
    }
    with gateways(gateway_env) as make:
        gateway = make()
        queue = TracedQueue("default", connection=gateway.app.extensions["tracegate.redis"])
        with gateway.telemetry.tracer("test").start_as_current_span("checkout") as root:
            jobs = [queue.enqueue("tests.jobs.functions.slow", 0.15) for _ in range(JOBS)]
        gateway.flush()
    trace_id = f"{root.get_span_context().trace_id:032x}"

    workers = []
    for host in HOSTS:
        home = tmp_path / host
        home.mkdir()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(ROOT),
            "HOME": str(home),
            "REDIS_URL": redis_url,
            "OTEL_SERVICE_NAME": "checkout-worker",
            "OTEL_RESOURCE_ATTRIBUTES": f"host.name={host}",
            "OTEL_EXPORTER_OTLP_ENDPOINT": collectors[host].endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "TRACEGATE_STORE": "0",
        }
        workers.append(start_worker(env, "--burst", cwd=home))
    try:
        outputs = [worker.communicate(timeout=120)[0] for worker in workers]
    finally:
        for worker in workers:
            kill_session(worker.pid)
    assert [w.returncode for w in workers] == [0, 0], outputs

    producers = {
        s.span_id_hex: s
        for s in collectors["gateway"].wait_for_spans(lambda s: s.kind_name == "PRODUCER", JOBS)
    }
    deadline = time.monotonic() + 15
    while (
        time.monotonic() < deadline
        and sum(1 for host in HOSTS for s in collectors[host].spans if s.kind_name == "CONSUMER")
        < JOBS
    ):
        time.sleep(0.1)
    ran_on: list[tuple[str, str]] = []
    for host in HOSTS:
        for span in collectors[host].spans:
            if span.kind_name != "CONSUMER":
                continue
            assert span.resource["host.name"] == host  # each host exports its own spans
            assert span.trace_id_hex == trace_id
            assert span.parent_span_id_hex in producers
            assert producers[span.parent_span_id_hex].parent_span_id_hex == (
                f"{root.get_span_context().span_id:016x}"
            )
            ran_on.append((span.attributes["messaging.message.id"], host))
    assert sorted(job_id for job_id, _ in ran_on) == sorted(job.id for job in jobs)  # each once
    assert {host for _, host in ran_on} == set(HOSTS), ran_on  # both hosts took a share
