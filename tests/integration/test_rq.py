"""RQ: the request's trace continues through Redis into real worker processes.

Jobs are enqueued in this process (through the gateway or a TracedQueue), then a real
`tracegate worker --burst` subprocess runs them: forking, simple and spawning workers.
Assertions are on what the OTLP receiver, the Sentry envelope receiver and Redis got.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Retry
from rq.job import Job
from rq.version import VERSION as rq_version

from otel.rq import CARRIER_KEY, TracedJob, TracedQueue, TracedWorker, attempts
from tests.harness import Gateway, gateways, kill_session, output_within, start_worker
from tests.peers.envelope import EnvelopeReceiver
from tests.peers.otlp import OTLPReceiver
from tests.peers.spans import ReceivedSpan

ROOT = Path(__file__).resolve().parents[2]
TRACEGATE = str(Path(sys.executable).with_name("tracegate"))
TRACE = "7bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "20f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"
WORKER_CLASSES = ["fork", "simple", "spawn"]
RQ_MAJOR = int(rq_version.split(".")[0])


@pytest.fixture
def env(
    redis_url: str, envelope_receiver: EnvelopeReceiver, otlp_receiver: OTLPReceiver
) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "REDIS_URL": redis_url,
        "SENTRY_DSN": envelope_receiver.dsn,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
        "OTEL_SERVICE_NAME": "tracegate-test",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "TRACEGATE_DEMO_TASKS": "1",
        "TRACEGATE_TASKS": ",".join(
            f"{name}=tests.jobs.functions:{name}"
            for name in ("traced_echo", "boom", "current_baggage")
        ),
    }


@pytest.fixture
def gateway(env: dict[str, str]) -> Iterator[Gateway]:
    with gateways(env) as make:
        yield make()


@pytest.fixture
def connection(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as client:
        yield client


def run_worker(env: dict[str, str], worker_class: str = "fork", timeout: float = 90) -> str:
    process = start_worker(env, "--burst", "--worker-class", worker_class)
    output = output_within(process, timeout, "the burst worker did not finish")
    assert process.returncode == 0, output
    return output


def post_job(
    gateway: Gateway, body: dict[str, Any], traceparent: str = TRACEPARENT
) -> dict[str, Any]:
    response = gateway.client.post("/v1/jobs", json=body, headers={"traceparent": traceparent})
    assert response.status_code == 202, response.get_json()
    payload: dict[str, Any] = response.get_json()
    return payload


def consumer_spans(otlp: OTLPReceiver, job_id: str, count: int = 1) -> list[ReceivedSpan]:
    return otlp.wait_for_spans(
        lambda s: s.kind_name == "CONSUMER" and s.attributes.get("messaging.message.id") == job_id,
        count,
        timeout=15,
    )


def enqueue_traced(
    gateway: Gateway, connection: redis.Redis, function: str, *args: Any, **kwargs: Any
) -> tuple[Job, str]:
    """Enqueue inside a span of the test's own, as code outside a request would."""
    queue = TracedQueue("default", connection=connection)
    with gateway.telemetry.tracer("test").start_as_current_span("caller") as caller:
        job = queue.enqueue(f"tests.jobs.functions.{function}", *args, **kwargs)
    gateway.flush()
    return job, f"{caller.get_span_context().trace_id:032x}"


def producer_span(otlp: OTLPReceiver, trace_id: str = TRACE) -> ReceivedSpan:
    return otlp.wait_for_span(lambda s: s.kind_name == "PRODUCER" and s.trace_id_hex == trace_id)


@pytest.mark.parametrize(
    ("worker_class", "export"),
    [*[(w, "handoff") for w in WORKER_CLASSES], ("fork", "flush")],
)
def test_request_trace_reaches_the_worker(
    worker_class: str,
    export: str,
    gateway: Gateway,
    env: dict[str, str],
    otlp_receiver: OTLPReceiver,
    envelope_receiver: EnvelopeReceiver,
    connection: redis.Redis,
) -> None:
    created = post_job(gateway, {"task": "traced_echo", "args": ["hello"]})
    assert created["trace_id"] == TRACE
    assert created["trace_id_uuid"] == "7bf92f35-77b3-4da6-a3ce-929d0e0e4736"
    job = Job.fetch(created["job_id"], connection=connection)
    carrier = job.meta[CARRIER_KEY]
    assert carrier["traceparent"].startswith(f"00-{TRACE}-")
    assert carrier["sentry-trace"].startswith(f"{TRACE}-")
    assert "_sentry_trace_headers" not in job.meta  # sentry-sdk's RqIntegration is off
    gateway.flush()

    run_worker({**env, "TRACEGATE_RQ_EXPORT": export}, worker_class)
    assert connection.keys("tracegate:handoff:*") == []  # the parent took everything over

    server = otlp_receiver.wait_for_span(lambda s: s.name == "POST /v1/jobs")
    producer = producer_span(otlp_receiver)
    (consumer,) = consumer_spans(otlp_receiver, job.id)
    assert server.trace_id_hex == producer.trace_id_hex == consumer.trace_id_hex == TRACE
    assert producer.name == "send default" and producer.parent_span_id_hex == server.span_id_hex
    assert producer.attributes["messaging.message.id"] == job.id
    assert consumer.name == "process default"
    assert consumer.parent_span_id_hex == producer.span_id_hex
    assert [(t, s) for t, s, _ in consumer.links] == [(TRACE, producer.span_id_hex)]
    assert consumer.attributes["messaging.system"] == "rq"
    assert consumer.attributes["messaging.operation.type"] == "process"
    assert consumer.attributes["messaging.destination.name"] == "default"
    assert consumer.attributes["messaging.rq.job.function"] == "tests.jobs.functions.traced_echo"
    assert consumer.attributes["messaging.rq.job.attempt"] == 1
    assert consumer.attributes["messaging.rq.queue_wait_s"] >= 0
    assert consumer.status_name == "UNSET"
    transaction = envelope_receiver.wait_for(
        lambda t: t["contexts"]["trace"]["span_id"] == consumer.span_id_hex, item_type="transaction"
    )
    assert transaction["contexts"]["trace"]["op"] == "queue.process"
    if worker_class != "spawn" or RQ_MAJOR >= 3:
        # rq 2.x's spawned work horse runs rq's plain classes: no telemetry inside it.
        inner = otlp_receiver.wait_for_span(lambda s: s.name == "inside the job")
        assert (inner.trace_id_hex, inner.parent_span_id_hex) == (TRACE, consumer.span_id_hex)
        assert transaction["spans"][0]["description"] == "inside the job"

    status = gateway.client.get(created["status_url"]).get_json()
    assert status["status"] == "finished" and status["result"] == "hello"
    assert status["trace_id"] == TRACE and status["attempts"] == 1


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_failed_job_sends_one_linked_sentry_error(
    worker_class: str,
    gateway: Gateway,
    env: dict[str, str],
    otlp_receiver: OTLPReceiver,
    envelope_receiver: EnvelopeReceiver,
) -> None:
    created = post_job(gateway, {"task": "fail", "kwargs": {"message": "broken on purpose"}})
    gateway.flush()
    run_worker(env, worker_class)

    (consumer,) = consumer_spans(otlp_receiver, created["job_id"])
    assert consumer.status_name == "ERROR"
    assert consumer.attributes["error.type"] == "gateway.tasks.DemoFailure"
    assert any(name == "exception" for name, _ in consumer.events)
    error = envelope_receiver.wait_for(lambda e: "exception" in e, item_type="event")
    assert error["exception"]["values"][-1]["type"] == "DemoFailure"
    assert error["contexts"]["trace"]["trace_id"] == TRACE
    assert error["contexts"]["trace"]["span_id"] == consumer.span_id_hex
    assert error["tags"]["rq.job_id"] == created["job_id"]
    assert error["tags"]["rq.queue"] == "default"
    assert error["tags"]["rq.function"] == "gateway.tasks.fail"
    assert error["tags"]["rq.attempt"] == "1"
    assert error["exception"]["values"][-1]["mechanism"] == {"type": "rq", "handled": False}
    time.sleep(0.5)
    assert len(envelope_receiver.events()) == 1
    status = gateway.client.get(created["status_url"]).get_json()
    assert status["status"] == "failed" and "broken on purpose" in status["error"]


@pytest.mark.parametrize("worker_class", WORKER_CLASSES)
def test_retries_make_one_span_per_attempt_and_one_final_error(
    worker_class: str,
    gateway: Gateway,
    env: dict[str, str],
    otlp_receiver: OTLPReceiver,
    envelope_receiver: EnvelopeReceiver,
    connection: redis.Redis,
) -> None:
    created = post_job(gateway, {"task": "boom", "retry": 2})
    job = Job.fetch(created["job_id"], connection=connection)
    carrier = dict(job.meta[CARRIER_KEY])
    gateway.flush()
    run_worker(env, worker_class)

    spans = consumer_spans(otlp_receiver, created["job_id"], count=3)
    assert sorted(s.attributes["messaging.rq.job.attempt"] for s in spans) == [1, 2, 3]
    assert {s.trace_id_hex for s in spans} == {TRACE}
    assert len({s.parent_span_id_hex for s in spans}) == 1  # every attempt: the same creator
    assert {s.status_name for s in spans} == {"ERROR"}
    assert [
        s.attributes["messaging.rq.job.final_attempt"]
        for s in sorted(spans, key=lambda s: s.attributes["messaging.rq.job.attempt"])
    ] == [False, False, True]
    error = envelope_receiver.wait_for(lambda e: "exception" in e, item_type="event")
    assert error["tags"]["rq.attempt"] == "3"
    time.sleep(0.5)
    assert len(envelope_receiver.events()) == 1
    job.refresh()
    assert job.meta[CARRIER_KEY] == carrier  # never overwritten
    assert attempts(job) == 3


def test_returned_retry_until_exhausted_is_reported(
    env: dict[str, str],
    gateway: Gateway,
    otlp_receiver: OTLPReceiver,
    envelope_receiver: EnvelopeReceiver,
    connection: redis.Redis,
) -> None:
    job, trace_id = enqueue_traced(gateway, connection, "keep_retrying")
    run_worker(env)
    spans = consumer_spans(otlp_receiver, job.id, count=3)
    last = max(spans, key=lambda s: s.attributes["messaging.rq.job.attempt"])
    assert last.status_name == "ERROR" and last.attributes["error.type"] == "rq.RetriesExhausted"
    error = envelope_receiver.wait_for(lambda e: "exception" in e, item_type="event")
    assert error["exception"]["values"][0]["type"] == "RetriesExhausted"
    assert error["contexts"]["trace"]["trace_id"] == last.trace_id_hex == trace_id


def test_killed_work_horse_is_reported_by_the_parent(
    env: dict[str, str],
    gateway: Gateway,
    otlp_receiver: OTLPReceiver,
    envelope_receiver: EnvelopeReceiver,
    connection: redis.Redis,
) -> None:
    job, trace_id = enqueue_traced(gateway, connection, "die")
    output = run_worker(env, "fork")
    (consumer,) = consumer_spans(otlp_receiver, job.id)
    assert consumer.trace_id_hex == trace_id and consumer.status_name == "ERROR"
    assert consumer.attributes["error.type"] == "rq.WorkHorseKilled"
    # Made by the worker itself, since the horse died with whatever it had.
    worker_pid = re.search(r"started with PID (\d+)", output)
    assert worker_pid is not None, output
    assert consumer.resource["process.pid"] == int(worker_pid.group(1))
    error = envelope_receiver.wait_for(lambda e: "exception" in e, item_type="event")
    assert error["exception"]["values"][0]["type"] == "WorkHorseKilled"
    assert "SIGKILL" in error["exception"]["values"][0]["value"]
    assert error["contexts"]["trace"]["trace_id"] == trace_id
    assert error["tags"]["rq.job_id"] == job.id


def test_a_work_horse_is_its_own_process_of_its_workers_service_instance(
    env: dict[str, str],
    gateway: Gateway,
    otlp_receiver: OTLPReceiver,
    connection: redis.Redis,
) -> None:
    ran, _ = enqueue_traced(gateway, connection, "traced_echo", "x")
    died, _ = enqueue_traced(gateway, connection, "die")
    output = run_worker(env, "fork")
    (consumer,) = consumer_spans(otlp_receiver, ran.id)
    in_horse = otlp_receiver.wait_for_span(  # the job's own span, made in the work horse
        lambda s: s.name == "inside the job" and s.parent_span_id_hex == consumer.span_id_hex
    )
    (by_worker,) = consumer_spans(otlp_receiver, died.id)  # made by the worker itself
    worker_pid = re.search(r"started with PID (\d+)", output)
    assert worker_pid is not None, output
    assert by_worker.resource["process.pid"] == int(worker_pid.group(1))
    assert in_horse.resource["process.pid"] not in (int(worker_pid.group(1)), os.getpid())
    instance = by_worker.resource["service.instance.id"]
    assert instance and in_horse.resource["service.instance.id"] == instance


def test_job_timeout_is_reported(
    env: dict[str, str],
    gateway: Gateway,
    otlp_receiver: OTLPReceiver,
    envelope_receiver: EnvelopeReceiver,
    connection: redis.Redis,
) -> None:
    job, trace_id = enqueue_traced(gateway, connection, "slow", 10, job_timeout=1)
    run_worker(env, "fork")
    (consumer,) = consumer_spans(otlp_receiver, job.id)
    assert consumer.status_name == "ERROR" and "Timeout" in consumer.attributes["error.type"]
    error = envelope_receiver.wait_for(lambda e: "exception" in e, item_type="event")
    assert "Timeout" in error["exception"]["values"][-1]["type"]
    assert error["contexts"]["trace"]["trace_id"] == trace_id


@pytest.mark.parametrize(
    "classes",
    [
        [
            "-w",
            "otel.rq.TracedWorker",
            "-j",
            "otel.rq.TracedJob",
            "--queue-class",
            "otel.rq.TracedQueue",
        ],
        ["-w", "otel.rq.TracedSimpleWorker"],  # rq's default job class is upgraded
    ],
)
def test_rq_command_line_runs_the_traced_classes(
    classes: list[str],
    gateway: Gateway,
    env: dict[str, str],
    otlp_receiver: OTLPReceiver,
    envelope_receiver: EnvelopeReceiver,
    redis_url: str,
) -> None:
    created = post_job(gateway, {"task": "fail"})
    gateway.flush()
    rq = str(Path(sys.executable).with_name("rq"))
    result = subprocess.run(
        [rq, "worker", "--burst", "--url", redis_url, *classes, "default"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (consumer,) = consumer_spans(otlp_receiver, created["job_id"])
    assert consumer.trace_id_hex == TRACE and consumer.status_name == "ERROR"
    error = envelope_receiver.wait_for(lambda e: "exception" in e, item_type="event")
    assert error["contexts"]["trace"]["span_id"] == consumer.span_id_hex


def test_every_creation_path_writes_the_carrier_once(
    env: dict[str, str],
    gateway: Gateway,
    otlp_receiver: OTLPReceiver,
    connection: redis.Redis,
) -> None:
    queue = TracedQueue("default", connection=connection)
    echo = "tests.jobs.functions.traced_echo"
    with gateway.telemetry.tracer("test").start_as_current_span("caller") as caller:
        jobs: dict[str, Job] = {
            "enqueue": queue.enqueue(echo, "a"),
            "enqueue_call": queue.enqueue_call(echo, args=("b",)),
            "enqueue_in": queue.enqueue_in(timedelta(seconds=0), echo, "c"),
            "enqueue_at": queue.enqueue_at(datetime.now(timezone.utc), echo, "d"),
        }
        # A one-shot generator, as rq allows.
        many = queue.enqueue_many(TracedQueue.prepare_data(echo, (arg,)) for arg in "ef")
        jobs["enqueue_many"] = many[0]
        jobs["depends_on"] = queue.enqueue(echo, "g", depends_on=jobs["enqueue"])
        direct = TracedJob.create(echo, args=("h",), connection=connection, origin="default")
        jobs["create+enqueue_job"] = queue.enqueue_job(direct)
        jobs["retry"] = queue.enqueue(echo, "i", retry=Retry(max=1))
    trace_id = f"{caller.get_span_context().trace_id:032x}"
    for path, job in jobs.items():
        stored = Job.fetch(job.id, connection=connection)
        assert stored.meta[CARRIER_KEY]["traceparent"].startswith(f"00-{trace_id}-"), path
    gateway.flush()
    time.sleep(0.1)  # the scheduled jobs are due
    run_worker(env, "fork")

    for path, job in jobs.items():
        (consumer,) = consumer_spans(otlp_receiver, job.id)
        assert consumer.trace_id_hex == trace_id, path
        producer = otlp_receiver.wait_for_span(
            lambda s, c=consumer: s.span_id_hex == c.parent_span_id_hex
        )
        assert producer.kind_name == "PRODUCER", path
    batch = otlp_receiver.wait_for_span(
        lambda s: s.attributes.get("messaging.batch.message_count") == 2
    )
    assert batch.name == "send default"


def test_delayed_job_can_start_a_linked_trace(
    env: dict[str, str],
    otlp_receiver: OTLPReceiver,
    connection: redis.Redis,
) -> None:
    env = {**env, "TRACEGATE_RQ_DELAYED_LINKS_ONLY": "1"}
    with gateways(env) as make:
        gateway = make()
        created = post_job(gateway, {"task": "echo", "args": [1], "delay_s": 0.05})
        gateway.flush()
    time.sleep(0.2)
    run_worker(env)
    (consumer,) = consumer_spans(otlp_receiver, created["job_id"])
    assert consumer.trace_id_hex != TRACE and consumer.parent_span_id_hex == ""
    producer = producer_span(otlp_receiver)
    assert [(t, s) for t, s, _ in consumer.links] == [(TRACE, producer.span_id_hex)]


@pytest.mark.parametrize("export", ["handoff", "flush"])
@pytest.mark.parametrize("peer", ["closed", "silent"])
def test_dead_collector_and_sentry_cost_at_most_the_flush_deadline(
    peer: str,
    export: str,
    env: dict[str, str],
    connection: redis.Redis,
    free_port: int,
    silent_server: str,
) -> None:
    # A closed port refuses at once; a silent server holds every send until its timeout.
    dead = f"http://127.0.0.1:{free_port}" if peer == "closed" else silent_server
    env = {
        **env,
        "OTEL_EXPORTER_OTLP_ENDPOINT": dead,
        "SENTRY_DSN": dead.replace("http://", "http://public@") + "/1",
        "TRACEGATE_RQ_FLUSH_TIMEOUT_S": "0.2",
        "TRACEGATE_RQ_EXPORT": export,
    }
    queue = TracedQueue("default", connection=connection)
    # Failing jobs: every work horse has a Sentry event to send, and spans to export
    # itself in flush mode, to a collector and a Sentry that are not there.
    jobs = [queue.enqueue("tests.jobs.functions.boom", str(i)) for i in range(25)]
    jobs += [queue.enqueue("tests.jobs.functions.traced_echo", str(i)) for i in range(25)]
    started = time.monotonic()
    output = run_worker(env, "fork")
    elapsed = time.monotonic() - started
    statuses = {Job.fetch(j.id, connection=connection).get_status() for j in jobs}
    assert statuses == {"failed", "finished"}
    # Without the deadline a silent collector holds each work horse for its export
    # timeout (10 s by default): 50 jobs would take minutes.
    assert elapsed < 50 * 0.2 + 20, f"50 jobs took {elapsed:.1f}s:\n{output[-6000:]}"


@pytest.mark.parametrize("export", ["handoff", "flush"])
def test_a_horse_with_nothing_pending_does_not_wait_for_its_deadline(
    export: str,
    env: dict[str, str],
    connection: redis.Redis,
    otlp_receiver: OTLPReceiver,
) -> None:
    env = {**env, "TRACEGATE_RQ_FLUSH_TIMEOUT_S": "3", "TRACEGATE_RQ_EXPORT": export}
    queue = TracedQueue("default", connection=connection)
    jobs = [queue.enqueue("tests.jobs.functions.traced_echo", str(i)) for i in range(10)]
    started = time.monotonic()
    output = run_worker(env, "fork")
    elapsed = time.monotonic() - started
    for job in jobs:
        consumer_spans(otlp_receiver, job.id)  # every job's spans were exported ...
    # ... and no horse sat out its 3 s deadline once they were: that alone is 30 s.
    assert elapsed < 15, f"10 jobs took {elapsed:.1f}s; the worker said:\n{output[-6000:]}"


@pytest.mark.parametrize("worker_class", ["fork", "simple"])
def test_warm_shutdown_flushes_what_the_worker_still_holds(
    worker_class: str,
    env: dict[str, str],
    gateway: Gateway,
    connection: redis.Redis,
    otlp_receiver: OTLPReceiver,
) -> None:
    # Spans wait 60 s in the batch queue: only the shutdown's flush can send them.
    env = {**env, "OTEL_BSP_SCHEDULE_DELAY": "60000"}
    job, trace_id = enqueue_traced(gateway, connection, "traced_echo", "x")
    process = start_worker(env, "--worker-class", worker_class)
    try:
        deadline = time.monotonic() + 30
        while Job.fetch(job.id, connection=connection).get_status() != "finished":
            assert time.monotonic() < deadline, "the job did not run"
            time.sleep(0.1)
        assert not [s for s in otlp_receiver.spans if s.kind_name == "CONSUMER"]
        process.send_signal(signal.SIGTERM)
        output = output_within(process, 30, "the worker did not stop on SIGTERM")
    finally:
        if process.poll() is None:
            kill_session(process.pid)
            process.wait()
    assert process.returncode == 0, output
    try:
        (consumer,) = consumer_spans(otlp_receiver, job.id)
    except AssertionError as missing:  # what the worker said about its flush, too
        raise AssertionError(f"{missing}\nworker output:\n{output[-4000:]}") from None
    assert consumer.trace_id_hex == trace_id


def test_a_stop_during_the_take_over_waits_for_it_and_is_not_lost(
    env: dict[str, str], gateway: Gateway, connection: redis.Redis, otlp_receiver: OTLPReceiver
) -> None:
    # rq's handler raises StopRequested in an idle worker's main thread; inside the
    # take-over an `except Exception` would swallow it and the worker would wait for
    # the next job instead of stopping, the spans it was ending half handled.
    output = _run_until_it_stops(
        env, gateway, connection, otlp_receiver, "StoppedDuringTakeOver",
        "the stop was lost: the worker did not stop",
    )  # fmt: skip
    assert "swallowed" not in output, output


def test_a_stop_that_escapes_rqs_loop_is_a_clean_stop(
    env: dict[str, str], gateway: Gateway, connection: redis.Redis, otlp_receiver: OTLPReceiver
) -> None:
    # Spans wait 60 s in the batch queue: only the shutdown's flush can send them.
    env = {**env, "OTEL_BSP_SCHEDULE_DELAY": "60000"}
    output = _run_until_it_stops(
        env, gateway, connection, otlp_receiver, "StopEscapesTheLoop", "the worker did not stop"
    )
    assert "StopRequested leaves work()" in output


def _run_until_it_stops(
    env: dict[str, str],
    gateway: Gateway,
    connection: redis.Redis,
    otlp_receiver: OTLPReceiver,
    worker_class: str,
    what: str,
) -> str:
    """`tracegate worker` with a class of tests/jobs/workers.py that stops itself after
    a traced job: it exits 0, the job finished, its consumer span arrived. Its output."""
    job, trace_id = enqueue_traced(gateway, connection, "traced_echo", "x")
    process = start_worker(env, "--worker-class", f"tests.jobs.workers.{worker_class}")
    output = output_within(process, 30, what)
    assert process.returncode == 0, output
    assert Job.fetch(job.id, connection=connection).get_status() == "finished"
    (consumer,) = consumer_spans(otlp_receiver, job.id)
    assert consumer.trace_id_hex == trace_id
    return output


def test_a_stop_that_escapes_rqs_loop_is_a_clean_stop_on_rqs_command_line(
    env: dict[str, str], gateway: Gateway, connection: redis.Redis, redis_url: str
) -> None:
    job, _ = enqueue_traced(gateway, connection, "traced_echo", "x")
    rq = str(Path(sys.executable).with_name("rq"))
    result = subprocess.run(
        [rq, "worker", "--burst", "--url", redis_url, "-w", "tests.jobs.workers.StopInTeardown",
         "-j", "otel.rq.TracedJob", "default"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert "StopRequested leaves rq's loop" in output
    assert result.returncode == 0, output
    assert "Traceback" not in output, output
    assert Job.fetch(job.id, connection=connection).get_status() == "finished"


def test_the_worker_leaves_its_channel_at_once_when_the_reader_saw_the_reply_first(
    gateway: Gateway, connection: redis.Redis
) -> None:
    # rq's shutdown sends UNSUBSCRIBE, then stops the thread that reads the worker's
    # channel in 60 s reads. Here that thread reads the reply before the stop, as it
    # sometimes does under load: it must still end now, not after its next 60 s read
    # (redis-py >= 8.2 waits for it without a bound: the worker's shutdown stalled).
    worker = TracedWorker(["default"], connection=connection)
    worker.subscribe()
    pubsub, reader = worker.pubsub, worker.pubsub_thread
    channel = worker.pubsub_channel_name
    deadline = time.monotonic() + 10
    while dict(connection.pubsub_numsub(channel)).get(channel.encode()) != 1:
        assert time.monotonic() < deadline, "the worker did not subscribe"
        time.sleep(0.01)
    send = pubsub.unsubscribe

    def unsubscribe_and_let_the_reader_read(*args: Any) -> Any:
        result = send(*args)
        deadline = time.monotonic() + 10
        while pubsub.subscribed and time.monotonic() < deadline:
            time.sleep(0.01)
        return result

    pubsub.unsubscribe = unsubscribe_and_let_the_reader_read  # type: ignore[method-assign]
    leaving = threading.Thread(target=worker.unsubscribe, daemon=True)
    leaving.start()
    leaving.join(10)
    assert not leaving.is_alive(), "unsubscribe is waiting out the reader's 60 s read"
    reader.join(5)
    assert not reader.is_alive(), "the channel's reader is still reading"
    assert dict(connection.pubsub_numsub(channel)).get(channel.encode()) == 0
    assert not [c for c in connection.client_list() if c["cmd"] == "unsubscribe"]


def test_delayed_job_kwargs_stay_the_tasks_arguments(
    gateway: Gateway, env: dict[str, str], connection: redis.Redis
) -> None:
    hostile = {"job_id": "chosen-id", "meta": {"otel": "junk"}, "on_success": "os.getcwd"}
    created = post_job(gateway, {"task": "echo", "kwargs": hostile, "delay_s": 0.05})
    assert created["job_id"] != "chosen-id"
    job = Job.fetch(created["job_id"], connection=connection)
    assert job.kwargs == hostile and job.success_callback is None
    assert isinstance(job.meta[CARRIER_KEY], dict)
    time.sleep(0.2)
    run_worker(env)
    status = gateway.client.get(created["status_url"]).get_json()
    assert status["result"] == {"args": [], "kwargs": hostile}


def test_job_sees_the_requests_baggage(gateway: Gateway, env: dict[str, str]) -> None:
    response = gateway.client.post(
        "/v1/jobs",
        json={"task": "current_baggage"},
        headers={"traceparent": TRACEPARENT, "baggage": "tenant=acme,plan=pro"},
    )
    created = response.get_json()
    gateway.flush()
    run_worker(env)
    status = gateway.client.get(created["status_url"]).get_json()
    assert status["result"] == {"tenant": "acme", "plan": "pro"}


def test_a_malformed_carrier_does_not_stop_the_worker(
    gateway: Gateway, env: dict[str, str], otlp_receiver: OTLPReceiver, connection: redis.Redis
) -> None:
    queue = TracedQueue("default", connection=connection)
    broken = queue.enqueue("tests.jobs.functions.traced_echo", "x")
    broken.meta[CARRIER_KEY] = "not a carrier"
    broken.save_meta()
    after = queue.enqueue("tests.jobs.functions.traced_echo", "y")
    run_worker(env, "simple")
    assert Job.fetch(broken.id, connection=connection).get_status() == "finished"
    assert Job.fetch(after.id, connection=connection).get_status() == "finished"
    (consumer,) = consumer_spans(otlp_receiver, broken.id)
    assert consumer.parent_span_id_hex == ""  # a new trace, not a crash
