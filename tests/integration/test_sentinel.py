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
import signal
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
            pending = set(accepted)
            deadline = time.monotonic() + 90
            while True:
                # Each look reads the primary the sentinels name once the deployment
                # has settled: on a loaded machine they can fail over a second time,
                # from the replica they just promoted to the other one, and the first
                # stays a primary (with the worker's jobs in flight on it) until they
                # turn it into a replica.
                deployment.await_settled()
                connection = connect(deployment.url)
                started = StartedJobRegistry("default", connection=connection)
                for job_id in list(pending):
                    if Job.fetch(job_id, connection=connection).get_status() == "finished":
                        pending.discard(job_id)
                intermediate = connection.lrange("rq:queue:default:intermediate", 0, -1)
                taken = {job_id.decode() for job_id in intermediate}
                taken |= set(started.get_job_ids())
                if (len(pending) <= 1 and pending <= taken) or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            if not (len(pending) <= 1 and pending <= taken):
                statuses = {
                    job_id: Job.fetch(job_id, connection=connection).get_status()
                    for job_id in sorted(pending)[:5]
                }
                raise AssertionError(
                    f"{len(pending)} acknowledged jobs unfinished; {len(intermediate)} in rq's "
                    f"intermediate list, {len(set(started.get_job_ids()))} in the started "
                    f"registry, {connection.llen('rq:queue:default')} queued; some of "
                    f"theirs: {statuses}; the servers: {deployment.describe(sorted(pending)[0])}; "
                    f"this check read from {connection.connection_pool.get_master_address()};"
                    f" the worker said:\n{log.read_text()[-3000:]}"
                )
    finally:
        stop.set()
        # A warm stop: the worker takes over and exports what its last work horses
        # handed over (a SIGKILL right after the last job finished would lose them).
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        finally:
            kill_session(worker.pid)
            worker.wait(timeout=30)
    # The refusals while there was no primary carried their request's trace id.
    assert all(len(error["trace_id"]) == 32 for error in refused)
    ran = {job_id: trace_id for job_id, trace_id in accepted.items() if job_id not in pending}

    def traced() -> dict[str, str]:
        spans = otlp_receiver.spans
        return {
            s.attributes["messaging.message.id"]: s.trace_id_hex
            for s in spans
            if s.kind_name == "CONSUMER"
        }

    deadline = time.monotonic() + 30
    while len(set(ran) - set(traced())) > 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)  # the last one, if it comes
    consumers = traced()
    missing = set(ran) - set(consumers)
    # Every job that ran is in its request's trace. A work horse hands its spans over
    # through Redis and (TRACEGATE_REDIS_WAIT_REPLICAS=1) waits until a replica has
    # them; only the horse running when the primary died can lose them: one job.
    assert all(
        consumers[job_id] == trace_id for job_id, trace_id in ran.items() if job_id in consumers
    )
    assert len(missing) <= 1, (
        f"{len(missing)} of {len(ran)} jobs that ran have no consumer span; what the worker "
        "said of them:\n"
        + "\n".join(
            line for line in log.read_text().splitlines() if any(j in line for j in missing)
        )[-6000:]
        + f"\nits last words:\n{log.read_text()[-2000:]}"
    )
