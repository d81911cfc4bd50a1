"""Redis Sentinel failover under a stream of job submissions.

A real primary, two replicas and three sentinels on loopback; the gateway and a forking
`tracegate worker` reach Redis only through `REDIS_URL=redis+sentinel://...`. The
primary is SIGKILLed while requests keep coming: the gateway answers 503 with the trace
id while there is no primary, follows the promoted replica, and every job it
acknowledged (202, after `TRACEGATE_REDIS_WAIT_REPLICAS=1` saw it on a replica) runs,
in its request's trace."""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rq.job import Job
from rq.registry import StartedJobRegistry

from gateway.redisconn import connect
from tests.harness import ROOT, gateways, kill_session, start_worker
from tests.peers.otlp import OTLPReceiver
from tests.peers.sentinel import SentinelDeployment


@pytest.fixture
def deployment() -> Iterator[SentinelDeployment]:
    with SentinelDeployment(replicas=2) as running:
        yield running


def test_failover_loses_no_acknowledged_job_and_keeps_traces(
    deployment: SentinelDeployment, otlp_receiver: OTLPReceiver, tmp_path: Path
) -> None:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "REDIS_URL": deployment.url,
        "TRACEGATE_REDIS_WAIT_REPLICAS": "1",
        "TRACEGATE_DEMO_TASKS": "1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_SERVICE_NAME": "tracegate-test",
    }
    log = tmp_path / "worker.log"
    worker = start_worker(env, stdout=log.open("w"))
    accepted: dict[str, str] = {}  # job id -> the trace id of its request
    refused: list[dict[str, str]] = []
    stop = threading.Event()
    try:
        with gateways(env) as make:
            gateway = make()

            def submit() -> None:
                while not stop.is_set():
                    trace_id = secrets.token_hex(16)
                    response = gateway.client.post(
                        "/v1/jobs",
                        json={"task": "echo", "args": [trace_id]},
                        headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
                    )
                    body = response.get_json()
                    if response.status_code == 202:
                        assert body["trace_id"] == trace_id
                        accepted[body["job_id"]] = trace_id
                    else:
                        assert response.status_code == 503, body
                        assert body["error"]["code"] == "queue_unavailable"
                        refused.append(body["error"])
                    time.sleep(0.02)

            submitter = threading.Thread(target=submit)
            submitter.start()
            time.sleep(1.5)
            before = len(accepted)
            assert before > 0
            deployment.kill_primary()
            deadline = time.monotonic() + 30
            while len(accepted) < before + 20 and time.monotonic() < deadline:
                time.sleep(0.2)  # the gateway acknowledges jobs on the new primary
            stop.set()
            submitter.join(timeout=30)
            assert len(accepted) >= before + 20, f"{len(accepted) - before} after the failover"
            gateway.flush()
            # Every acknowledged job runs on the worker, which followed the failover too,
            # but for the one the worker held when the primary died: just moved to rq's
            # intermediate queue (never started) or started by the worker that then lost
            # Redis. rq keeps it in that list or in the started registry, where its
            # maintenance finds it (the traced worker reports an abandoned job) and
            # retries it as its policy says. Not lost; one at most (one worker).
            connection = connect(deployment.url)
            started = StartedJobRegistry("default", connection=connection)

            def taken() -> set[str]:
                found = connection.lrange("rq:queue:default:intermediate", 0, -1)
                return {job_id.decode() for job_id in found} | set(started.get_job_ids())

            pending = set(accepted)
            deadline = time.monotonic() + 60
            while pending - taken() and time.monotonic() < deadline:
                for job_id in list(pending):
                    if Job.fetch(job_id, connection=connection).get_status() == "finished":
                        pending.discard(job_id)
                time.sleep(0.3)
            if not (len(pending) <= 1 and pending <= taken()):
                intermediate = connection.lrange("rq:queue:default:intermediate", 0, -1)
                statuses = {
                    job_id: Job.fetch(job_id, connection=connection).get_status()
                    for job_id in sorted(pending)[:5]
                }
                raise AssertionError(
                    f"{len(pending)} acknowledged jobs unfinished; {len(intermediate)} in rq's "
                    f"intermediate list, {len(set(started.get_job_ids()))} in the started "
                    f"registry, {connection.llen('rq:queue:default')} queued; some of "
                    f"theirs: {statuses}; the worker said:\n{log.read_text()[-3000:]}"
                )
    finally:
        stop.set()
        kill_session(worker.pid)
        worker.wait(timeout=30)
    # The refusals while there was no primary carried their request's trace id.
    assert all(len(error["trace_id"]) == 32 for error in refused)
    ran = {job_id: trace_id for job_id, trace_id in accepted.items() if job_id not in pending}
    consumers = otlp_receiver.wait_for_spans(
        lambda s: s.kind_name == "CONSUMER", len(ran) - 1, timeout=30
    )
    time.sleep(1)  # the last one, if it comes
    traced = {
        s.attributes["messaging.message.id"]: s.trace_id_hex
        for s in otlp_receiver.spans
        if s.kind_name == "CONSUMER"
    }
    # Every job that ran is in its request's trace. The spans a work horse handed over
    # through Redis in the instant the primary died can go with it (replication is
    # asynchronous): one job at most, the one running then.
    assert all(traced[job_id] == trace_id for job_id, trace_id in ran.items() if job_id in traced)
    assert len(ran) - len(set(ran) & set(traced)) <= 1
    assert len(consumers) >= len(ran) - 1
