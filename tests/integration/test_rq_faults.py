"""RQ under faults, with real processes: a worker killed mid-job, Redis killed and back.

What the tests hold: every job acknowledged with 202 runs exactly once or ends failed
and reported with its trace; nothing stays "started" forever; workers reconnect by
themselves. Assertions are on Redis, the OTLP receiver and the Sentry receiver.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from rq import Retry
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from otel.rq import attempts
from tests.harness import Gateway, gateways, kill_session, start_worker
from tests.integration.test_rq import (
    consumer_spans,
    enqueue_traced,
    run_worker,
)
from tests.peers import RedisServer
from tests.peers.envelope import EnvelopeReceiver
from tests.peers.otlp import OTLPReceiver

pytest_plugins = ["tests.integration.test_rq"]  # its env / gateway / connection fixtures


def stop(process: subprocess.Popen[str]) -> str:
    kill_session(process.pid)
    output, _ = process.communicate(timeout=10)
    return output


def wait_status(job: Job, wanted: set[str], timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        raw = job.get_status(refresh=True)
        status = str(getattr(raw, "value", raw))
        if status in wanted:
            return status
        time.sleep(0.1)
    raise AssertionError(f"job {job.id} is {status!r}, not one of {sorted(wanted)}")


@pytest.mark.parametrize("retry", [False, True])
def test_worker_killed_with_its_job_is_found_abandoned_and_reported(
    retry: bool,
    env: dict[str, str],
    gateway: Gateway,
    connection: redis.Redis,
    otlp_receiver: OTLPReceiver,
    envelope_receiver: EnvelopeReceiver,
) -> None:
    options: dict[str, Any] = {"retry": Retry(max=1)} if retry else {}
    job, trace_id = enqueue_traced(gateway, connection, "slow_first_attempt", 60, **options)
    worker = start_worker(env)
    try:
        assert wait_status(job, {"started"}) == "started"
        time.sleep(0.3)  # the work horse is inside the job
    finally:
        output = stop(worker)  # SIGKILL to the worker and its work horse at once
    registry = StartedJobRegistry("default", connection=connection)
    members = connection.zrange(registry.key, 0, -1)
    assert members, f"the killed job is not in the started registry:\n{output[-2000:]}"
    # rq finds a job abandoned once its heartbeat lapses (60 s or more after the kill);
    # moving the registry's expiry into the past stands for that wait.
    connection.zadd(registry.key, {member: time.time() - 1 for member in members})

    run_worker(env, "fork")  # its registry maintenance finds the job first thing

    spans = consumer_spans(otlp_receiver, job.id, count=2 if retry else 1)
    lost = [s for s in spans if s.attributes.get("error.type") == "rq.AbandonedJob"]
    assert len(lost) == 1 and lost[0].trace_id_hex == trace_id
    assert lost[0].status_name == "ERROR"
    assert lost[0].attributes["messaging.rq.job.attempt"] == 1
    if retry:
        # Retried and run once more, in the same trace; the lost attempt was not final.
        assert wait_status(job, {"finished"}) == "finished"
        assert lost[0].attributes["messaging.rq.job.final_attempt"] is False
        (rerun,) = [s for s in spans if s is not lost[0]]
        assert rerun.trace_id_hex == trace_id and rerun.status_name == "UNSET"
        assert rerun.attributes["messaging.rq.job.attempt"] == 2
    else:
        assert wait_status(job, {"failed"}) == "failed"
        error = envelope_receiver.wait_for(
            lambda e: e["exception"]["values"][0]["type"] == "AbandonedJob", item_type="event"
        )
        assert error["contexts"]["trace"]["trace_id"] == trace_id
        assert error["tags"]["rq.job_id"] == job.id
    assert not connection.zrange(registry.key, 0, -1)  # nothing stays "started"


@pytest.fixture
def durable_redis() -> Iterator[RedisServer]:
    with RedisServer(durable=True) as server:
        yield server


def test_redis_killed_and_restarted_loses_no_acknowledged_job(
    durable_redis: RedisServer,
    env: dict[str, str],
    otlp_receiver: OTLPReceiver,
) -> None:
    env = {**env, "REDIS_URL": durable_redis.url}
    acknowledged: dict[str, str] = {}  # job id -> trace id
    refused = 0
    with gateways(env) as make:
        gateway = make()
        worker = start_worker(env)
        try:

            def submit(n: int) -> int:
                response = gateway.client.post("/v1/jobs", json={"task": "echo", "args": [n]})
                body = response.get_json()
                if response.status_code == 202:
                    acknowledged[body["job_id"]] = body["trace_id"]
                else:
                    # Refused with the request's trace id, in the body and the headers.
                    assert response.status_code == 503, body
                    assert body["error"]["code"] == "queue_unavailable"
                    header = response.headers["X-Trace-ID"].replace("-", "")
                    assert body["error"]["trace_id"] == header
                return int(response.status_code)

            assert [submit(n) for n in range(10)] == [202] * 10
            durable_redis.kill()
            statuses = [submit(n) for n in range(10, 15)]
            refused = statuses.count(503)
            assert refused == 5
            durable_redis.restart()
            assert [submit(n) for n in range(15, 25)] == [202] * 10

            with redis.Redis.from_url(durable_redis.url) as connection:
                for job_id in acknowledged:
                    job = Job.fetch(job_id, connection=connection)
                    assert wait_status(job, {JobStatus.FINISHED.value}) == "finished"
                    # Exactly once: the worker counted one attempt per job.
                    assert attempts(job) == 1
            assert worker.poll() is None, "the worker died instead of reconnecting"
            # The worker exports the last jobs' spans after they finish: wait for them
            # before stopping it.
            received = otlp_receiver.wait_for_spans(
                lambda s: s.kind_name == "CONSUMER", count=20, timeout=20
            )
        finally:
            output = stop(worker)
    assert len(acknowledged) == 20, output[-2000:]
    spans = {s.attributes.get("messaging.message.id"): s for s in received}
    for job_id, trace_id in acknowledged.items():
        assert spans[job_id].trace_id_hex == trace_id, output[-2000:]


def test_work_horse_waits_until_a_replica_holds_its_spans(
    replicated_redis: tuple[RedisServer, RedisServer],
    env: dict[str, str],
    otlp_receiver: OTLPReceiver,
) -> None:
    # With TRACEGATE_REDIS_WAIT_REPLICAS a failover to a replica cannot lose the spans a
    # work horse handed over: the horse WAITs for the replica (up to its flush bound).
    primary, replica = replicated_redis
    env = {
        **env,
        "REDIS_URL": primary.url,
        "TRACEGATE_REDIS_WAIT_REPLICAS": "1",
        "TRACEGATE_RQ_FLUSH_TIMEOUT_S": "0.3",
    }
    with gateways(env) as make, redis.Redis.from_url(primary.url) as connection:
        gateway = make()
        connection.config_resetstat()
        job, trace_id = enqueue_traced(gateway, connection, "traced_echo", "held")
        run_worker(env)
        assert consumer_spans(otlp_receiver, job.id)[0].trace_id_hex == trace_id
        waited = connection.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)
        assert waited >= 1, "the work horse did not wait for the replica"
        # A replica that stops answering holds the horse back by the flush bound at
        # most; the job still finishes and its spans still arrive.
        replica.pause()
        try:
            job, trace_id = enqueue_traced(gateway, connection, "traced_echo", "paused")
            run_worker(env)
        finally:
            replica.resume()
        assert Job.fetch(job.id, connection=connection).get_status() == JobStatus.FINISHED
        assert consumer_spans(otlp_receiver, job.id)[0].trace_id_hex == trace_id


def test_work_horse_outliving_its_worker_exports_its_own_spans(
    env: dict[str, str],
    gateway: Gateway,
    connection: redis.Redis,
    otlp_receiver: OTLPReceiver,
) -> None:
    job, trace_id = enqueue_traced(gateway, connection, "slow", 2)
    worker = start_worker(env)
    try:
        assert wait_status(job, {"started"}) == "started"
        os.kill(worker.pid, signal.SIGKILL)  # the worker only: its work horse goes on
        assert wait_status(job, {"finished"}) == "finished"
        (consumer,) = consumer_spans(otlp_receiver, job.id)
    finally:
        output = stop(worker)
    # Nobody was left to take the spans over: the work horse exported them itself.
    assert consumer.trace_id_hex == trace_id and consumer.status_name == "UNSET", output[-2000:]
    assert not connection.keys("tracegate:handoff:*")
