"""RQ: carry the trace through Redis into every worker, and lose nothing.

Only RQ's own extension points are used, so the classes work in code and on RQ's
command line::

    queue = TracedQueue("default", connection=redis)   # job_class=TracedJob
    rq worker -w otel.rq.TracedWorker -j otel.rq.TracedJob

- `TracedJob.create` — the one method every creation path goes through (`enqueue`,
  `enqueue_call`, `enqueue_many`, `enqueue_in`, `enqueue_at`, dependents, direct
  `Job.create`) — writes the carrier once under `job.meta["otel"]` (traceparent,
  tracestate, baggage, sentry-trace). Retries, requeues and the scheduler re-save the
  same job, so the carrier is never overwritten.
- `TracedQueue` wraps each enqueue in a PRODUCER span `send <queue>`; a job created
  without it gets a PRODUCER span of its own, so every job has a trace.
- `TracedWorker`, `TracedSimpleWorker` and `TracedSpawnWorker` run the whole job
  (callbacks and failure handling included) inside a CONSUMER span `process <queue>`
  whose parent is the carrier, with a link to it. Failures set ERROR, record the
  exception and send one Sentry error linked to the trace — by default only when no
  retry follows. A work horse killed by a signal or by the parent's timeout is
  reported by the parent from the job's stored carrier. A forked work horse hands its
  spans to the worker in one RPUSH before `os._exit` (bounded by the Redis client's
  socket timeout, like rq's own writes; with `TRACEGATE_REDIS_WAIT_REPLICAS`, it then
  waits up to `TRACEGATE_RQ_FLUSH_TIMEOUT_S` until replicas hold them) and flushes
  its Sentry events within `TRACEGATE_RQ_FLUSH_TIMEOUT_S`.
- A forked work horse is the job's critical path and every page it touches is copied
  first, so the forking worker does what it can for it: it starts the consumer span
  before the fork (announced to the processors only when the horse hands it back),
  and takes over what horses handed over while the next horse runs, at most every
  0.25 s, or at once when no job is waiting and when it stops.

The workers call `otel.setup()` in `__init__`, which also runs in a spawned work horse,
so `rq worker -w otel.rq.TracedWorker` needs no code of the user's to set up telemetry.
"""

from __future__ import annotations

import inspect
import logging
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

import sentry_sdk
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode
from rq import Queue, SimpleWorker, Worker
from rq.exceptions import AbandonedJobError, StopRequested
from rq.job import Job, JobStatus
from rq.version import VERSION as rq_version
from sentry_sdk.utils import event_from_exception

from otel import ids
from otel.propagation import TracegatePropagator
from otel.sentry import SentryBridge, open_unit, pin, unpin
from otel.telemetry import Telemetry, active, setup

try:  # rq >= 2.2
    from rq.worker import SpawnWorker
except ImportError:  # pragma: no cover - older rq
    SpawnWorker = None  # type: ignore[assignment,misc]

__all__ = [
    "CARRIER_KEY",
    "TRACED_FIELD",
    "TracedJob",
    "TracedQueue",
    "TracedSimpleWorker",
    "TracedSpawnWorker",
    "TracedWorker",
    "attempts",
    "carrier",
    "carrier_trace_id",
]

logger = logging.getLogger(__name__)
jobs_log = logging.getLogger("tracegate.jobs")

CARRIER_KEY = "otel"
# A field of our own in the job's Redis hash: rq's `save()` writes its fields with
# HSET and leaves this one alone, so it counts attempts across retries and requeues.
_ATTEMPT_FIELD = "tracegate_attempt"
_PRODUCER_KEY = "tracegate.rq.producer"
TRACED_FIELD = "tracegate"
_SCHEDULED = "scheduled"
_SYSTEM = "rq"
# A busy forking worker takes over what its work horses handed over at most this
# often: after a fork, every page the worker writes to is copied first, so decoding
# and feeding many payloads at once costs little more than feeding one.
_TAKE_OVER_EVERY_S = 0.25


def _telemetry() -> Telemetry | None:
    return active()


# The SDK's get_tracer costs a few microseconds (a warnings filter, two scope objects)
# on every call: the producer keeps the active telemetry's tracer.
_producer_tracer: tuple[Telemetry, trace.Tracer] | None = None


def _tracer() -> trace.Tracer:
    global _producer_tracer
    telemetry = _telemetry()
    if telemetry is None:
        return trace.get_tracer(__name__)
    cached = _producer_tracer
    if cached is None or cached[0] is not telemetry:
        cached = _producer_tracer = (telemetry, telemetry.tracer(__name__))
    return cached[1]


def _propagator() -> TracegatePropagator:
    telemetry = _telemetry()
    return telemetry.propagator if telemetry is not None else TracegatePropagator()


def _function(job: Job) -> str:
    try:
        return str(job.func_name)
    except Exception:  # an undeserialisable job still gets a span
        return "<unknown>"


def _base_attributes(job: Job, queue_name: str, operation: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": _SYSTEM,
        "messaging.operation.type": operation,
        "messaging.operation.name": operation,
        "messaging.destination.name": queue_name,
        "messaging.message.id": job.id,
        "messaging.rq.job.function": _function(job),
    }
    kwargs = job.connection.connection_pool.connection_kwargs
    if "host" in kwargs:
        attributes["server.address"] = str(kwargs["host"])
        attributes["server.port"] = int(kwargs.get("port", 6379))
    return attributes


def carrier(job: Job) -> dict[str, str]:
    """The job's stored carrier; {} when it is missing or not what tracegate wrote."""
    meta = job.meta if isinstance(job.meta, dict) else {}
    value = meta.get(CARRIER_KEY)
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def carrier_trace_id(job: Job) -> int | None:
    """The trace id a job's carrier continues, or None."""
    parent = ids.parse_traceparent(carrier(job).get("traceparent"))
    return parent.trace_id if parent is not None else None


def attempts(job: Job) -> int:
    """How many times a worker has started this job."""
    value = job.connection.hget(job.key, _ATTEMPT_FIELD)
    return int(value or 0)


# -- producer ---------------------------------------------------------------------


@contextmanager
def _producing(queue_name: str, batch: int | None = None) -> Iterator[trace.Span | None]:
    """A PRODUCER span `send <queue>` around one enqueue; nested enqueues reuse it."""
    if otel_context.get_value(_PRODUCER_KEY) is not None:
        yield None
        return
    attributes: dict[str, Any] = {
        "messaging.system": _SYSTEM,
        "messaging.operation.type": "send",
        "messaging.operation.name": "send",
        "messaging.destination.name": queue_name,
    }
    if batch is not None:
        attributes["messaging.batch.message_count"] = batch
    span = _tracer().start_span(f"send {queue_name}", kind=SpanKind.PRODUCER, attributes=attributes)
    ctx = trace.set_span_in_context(span)
    token = otel_context.attach(otel_context.set_value(_PRODUCER_KEY, span, ctx))
    try:
        yield span
    except Exception as error:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.set_attribute("error.type", type(error).__qualname__)
        raise
    finally:
        otel_context.detach(token)
        span.end()


class TracedJob(Job):
    """A Job whose creation writes the trace carrier once, under `meta["otel"]`."""

    @classmethod
    def create(cls, *args: Any, **kwargs: Any) -> Job:
        job = super().create(*args, **kwargs)
        try:
            _write_carrier(job)
        except Exception:  # telemetry never breaks an enqueue
            logger.exception("tracegate: could not write the trace carrier of job %s", job.id)
        return job


def _write_carrier(job: Job) -> None:
    # rq keeps the caller's meta dict: copy it so a reused dict never shares a carrier.
    # A new job gets the carrier of the context it is created in: whatever a caller put
    # under the key (a copied meta, an injected value) is replaced, once, here.
    meta = dict(job.meta or {})
    written: dict[str, str] = {}
    producer = otel_context.get_value(_PRODUCER_KEY)
    if isinstance(producer, trace.Span):
        if (
            producer.is_recording()
            and producer.attributes.get(  # type: ignore[attr-defined]
                "messaging.batch.message_count"
            )
            is None
        ):
            producer.set_attribute("messaging.message.id", job.id)
            producer.set_attribute("messaging.rq.job.function", _function(job))
        _propagator().inject(written)
    else:
        # Created outside a TracedQueue (Job.create, a plain Queue with job_class=TracedJob).
        with _producing(job.origin or "default"):
            _propagator().inject(written)
    if otel_context.get_value(_SCHEDULED):
        written[_SCHEDULED] = "1"
    meta[CARRIER_KEY] = written
    job.meta = meta


class TracedQueue(Queue):
    """A Queue that makes TracedJobs and wraps each enqueue in a PRODUCER span."""

    job_class = TracedJob

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("job_class") in (None, Job):
            kwargs["job_class"] = TracedJob
        super().__init__(*args, **kwargs)

    def enqueue_call(self, *args: Any, **kwargs: Any) -> Job:
        with _producing(self.name):
            return super().enqueue_call(*args, **kwargs)

    def enqueue_job(self, *args: Any, **kwargs: Any) -> Job:
        with _producing(self.name):
            return super().enqueue_job(*args, **kwargs)

    def enqueue_many(self, job_datas: Any, *args: Any, **kwargs: Any) -> list[Job]:
        datas = list(job_datas)  # rq takes any iterable, a one-shot generator too
        with _producing(self.name, batch=len(datas)):
            return super().enqueue_many(datas, *args, **kwargs)

    def enqueue_at(self, *args: Any, **kwargs: Any) -> Job:
        with _producing(self.name):
            token = otel_context.attach(otel_context.set_value(_SCHEDULED, True))
            try:
                return super().enqueue_at(*args, **kwargs)
            finally:
                otel_context.detach(token)


# -- consumer -----------------------------------------------------------------------


def _trip(thread: Any) -> None:
    """Clear a redis-py pubsub thread's running flag without waiting for it to end."""
    if "timeout" in inspect.signature(thread.stop).parameters:
        thread.stop(timeout=0)  # redis-py >= 8.2 joins in stop()
    else:
        thread.stop()


class _TracedWorkerMixin:
    """The consumer side, shared by every worker class (see the module docstring)."""

    job_class: type[Job]
    connection: Any
    name: str
    # A forked work horse inherits the consumer span the worker started for it (see
    # `execute_job`); a spawned one rebuilds the worker and starts its own.
    _starts_horse_span = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # `rq worker` passes job_class=rq.job.Job unless told otherwise: upgrade it.
        if kwargs.get("job_class") in (None, Job):
            kwargs["job_class"] = TracedJob
        super().__init__(*args, **kwargs)
        self._telemetry = setup()
        # The SDK's get_tracer costs more than the span it starts; a forked work horse
        # inherits this one.
        self._tracer = self._telemetry.tracer(__name__)
        self._span: trace.Span | None = None
        self._job_ctx = otel_context.Context()
        self._pin_parent: int | None = None
        self._horse_span: trace.Span | None = None
        self._handoff_due = False
        self._took_over_at = 0.0
        self._reported = False
        self._holding_signals = False
        self._held_signals: list[int] = []
        # rq logs every job exception at ERROR; the consumer span reports it to Sentry.
        from sentry_sdk.integrations.logging import ignore_logger

        ignore_logger("rq.worker")

    # rq's SIGTERM/SIGINT handlers raise StopRequested (or SystemExit) in whatever the
    # worker's main thread runs at that moment when no job is running. Inside our own
    # work — ending spans, building a Sentry envelope, a Redis call — an `except
    # Exception` that protects the worker would swallow it: the stop is lost, the span
    # half handled. The signal is held over such work and handed to rq's handler after.
    def request_stop(self, signum: int, frame: Any) -> Any:
        if not self._held(signum):
            super().request_stop(signum, frame)  # type: ignore[misc]

    def request_force_stop(self, signum: int, frame: Any) -> Any:
        if not self._held(signum):
            super().request_force_stop(signum, frame)  # type: ignore[misc]

    def _held(self, signum: int) -> bool:
        if self._holding_signals:
            self._held_signals.append(signum)
        return self._holding_signals

    @contextmanager
    def _signals_held(self) -> Iterator[None]:
        if self._holding_signals:
            yield
            return
        self._holding_signals = True
        try:
            yield
        finally:
            self._holding_signals = False
            held, self._held_signals = self._held_signals, []
            for signum in held:  # in arrival order, each to the handler now installed
                handler = signal.getsignal(signum)
                if callable(handler):
                    handler(signum, None)

    def clean_registries(self) -> Any:
        """rq's registry maintenance, reporting the abandoned jobs it finds.

        A job whose worker died with it (SIGKILL of the whole worker, a lost host) is
        found abandoned here, and rq tells the worker's exception handlers; the job's
        stored carrier still knows its trace. The handler is ours only for the length
        of the maintenance: rq 3's SpawnWorker pickles its handlers for the work horse.
        """
        handlers: list[Any] = self._exc_handlers  # type: ignore[attr-defined]
        handler = self._report_abandoned
        handlers.append(handler)
        try:
            return super().clean_registries()  # type: ignore[misc]
        finally:
            handlers.remove(handler)

    def _report_abandoned(self, job: Job, exc_type: Any, *rest: Any) -> None:
        if not (isinstance(exc_type, type) and issubclass(exc_type, AbandonedJobError)):
            return  # other failures are reported by handle_exception
        if self._span is not None:
            return
        with self._signals_held():
            try:
                self._report_lost(
                    job,
                    "AbandonedJob",
                    f"the job's worker died while it ran; found abandoned by {self.name}",
                )
            except Exception:
                logger.exception("tracegate: could not report abandoned job %s", job.id)

    def register_birth(self, *args: Any, **kwargs: Any) -> Any:
        result = super().register_birth(*args, **kwargs)  # type: ignore[misc]
        # A field of ours in the worker's hash lets `tracegate doctor` tell traced
        # workers from plain ones.
        cls = type(self)
        with self._signals_held():
            try:
                self.connection.hset(self.key, TRACED_FIELD, f"{cls.__module__}.{cls.__qualname__}")  # type: ignore[attr-defined]
            except Exception:
                logger.exception("tracegate: could not mark worker %s as traced", self.name)
        return result

    # Parent side (the worker process): count attempts before the job runs anywhere,
    # and take over the spans the work horse handed over once it is done.
    def execute_job(self, job: Job, queue: Queue) -> Any:
        self._count_attempt(job)
        self._horse_span = self._start_horse_span(job, queue)
        try:
            return super().execute_job(job, queue)  # type: ignore[misc]
        finally:
            # First: rq raises StopRequested wherever an idle worker is, and teardown
            # takes over only what is due. A SimpleWorker runs the job here: there is
            # nothing to take over.
            self._handoff_due = not isinstance(self, SimpleWorker)
            self._horse_span = None

    def _start_horse_span(self, job: Job, queue: Queue) -> trace.Span | None:
        """The consumer span a forked work horse will run the job in, started here.

        A work horse's first run through the SDK and the carrier costs it about ten
        times what it costs this warm process, and the horse is the job's critical
        path. The span is announced to the processors only when the horse hands it
        back: a horse that dies takes it along, and the worker reports the job anew.
        """
        handoff = self._telemetry.handoff
        if not self._starts_horse_span or handoff is None:
            return None
        with handoff.announced_later():
            return self._start_consumer(job, queue.name)

    # rq forks (or spawns) the work horse here; only the worker returns from it. What
    # earlier horses handed over is taken over while the new one runs, so no export,
    # decoding or Sentry transaction sits between two jobs.
    def fork_work_horse(self, job: Job, queue: Queue) -> Any:
        result = super().fork_work_horse(job, queue)  # type: ignore[misc]
        self._take_over_due(force=False)
        return result

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> Any:
        """rq's dequeue; with spans still to take over, a waiting job goes first, and
        before the worker waits for one, they are taken over."""
        dequeue = super().dequeue_job_and_maintain_ttl  # type: ignore[misc]
        if not self._handoff_due:
            return dequeue(timeout, max_idle_time)
        result = dequeue(None, max_idle_time)  # does not wait
        if result is None:
            self._take_over_due()
            if timeout is not None:
                result = dequeue(timeout, max_idle_time)
        return result

    def work(self, *args: Any, **kwargs: Any) -> bool:
        """rq's loop. rq's SIGTERM handler raises StopRequested wherever the idle
        worker's main thread is; between two iterations (at its `while True`, outside
        the loop's `try`) it leaves `work()` after rq's teardown, and `rq worker`
        reports it as an error with exit status 1. It is the stop that was asked for."""
        try:
            return bool(super().work(*args, **kwargs))  # type: ignore[misc]
        except StopRequested:
            logger.info("tracegate: worker %s stopped on request", self.name)
            return False

    def teardown(self) -> Any:
        if not getattr(self, "is_horse", False):
            self._take_over_due()
        return super().teardown()  # type: ignore[misc]

    def unsubscribe(self) -> Any:
        """rq's unsubscribe, with its pubsub thread told to stop first.

        rq sends UNSUBSCRIBE and then stops the thread that reads the worker's channel
        (in 60 s reads). When that thread reads the UNSUBSCRIBE reply before the stop
        flag is tripped, it goes back to a 60 s read — and redis-py >= 8.2 joins it
        without a bound: shutdown stalled for up to a minute. Tripped first, the reply
        is the thread's last read and it ends at once.
        """
        thread = getattr(self, "pubsub_thread", None)
        if thread is not None:
            _trip(thread)
        return super().unsubscribe()  # type: ignore[misc]

    def _take_over_due(self, force: bool = True) -> None:
        if not self._handoff_due:
            return
        now = time.monotonic()
        if not force and now - self._took_over_at < _TAKE_OVER_EVERY_S:
            return
        with self._signals_held():  # a stop between the two would skip the take-over
            self._handoff_due, self._took_over_at = False, now
            self._take_over_spans()

    def _count_attempt(self, job: Job) -> None:
        """Once per dequeued job (each attempt is a fresh `Job` object)."""
        if getattr(job, "_tracegate_attempt", None) is not None:
            return
        with self._signals_held():
            try:
                job._tracegate_attempt = job.connection.hincrby(job.key, _ATTEMPT_FIELD, 1)  # type: ignore[attr-defined]
            except Exception:
                logger.exception("tracegate: could not count the attempt of job %s", job.id)

    def _handoff_key(self) -> str:
        return f"tracegate:handoff:{self.name}"

    def _take_over_spans(self) -> None:
        """Take what the work horse handed over: its spans, and what it counted as lost."""
        handoff = self._telemetry.handoff
        counted = self._handoff_key() + ":counters"
        try:
            with self.connection.pipeline(transaction=True) as pipe:
                pipe.lrange(self._handoff_key(), 0, -1)
                pipe.lrange(counted, 0, -1)
                pipe.delete(self._handoff_key(), counted)
                payloads, counts, _ = pipe.execute()
            for count in counts:
                self._telemetry.counters.load(count)
            if handoff is None:
                return
            for payload in payloads:
                token = open_unit()
                try:
                    handoff.load(payload)
                finally:
                    unpin(token)
        except Exception:
            logger.exception("tracegate: could not take over the work horse's spans")

    def _hand_over_spans(self) -> None:
        """In the work horse: one RPUSH of every finished span, then only Sentry's queue."""
        telemetry = self._telemetry
        handoff = telemetry.handoff
        assert handoff is not None
        spans = handoff.take()
        if spans:
            try:
                # One round trip; no MULTI: the EXPIRE only bounds a list nobody takes.
                # With TRACEGATE_REDIS_WAIT_REPLICAS the horse also waits (as long as
                # its flush may take) until replicas hold them: a failover to one then
                # keeps them, and the worker takes them over there.
                replicas = telemetry.config.redis_wait_replicas
                with self.connection.pipeline(transaction=False) as pipe:
                    pipe.rpush(self._handoff_key(), handoff.encode(spans))
                    pipe.expire(self._handoff_key(), 3600)
                    if replicas:
                        wait_ms = max(1, int(telemetry.config.rq_flush_timeout_s * 1000))
                        pipe.wait(replicas, wait_ms)
                    pipe.execute()
            except Exception as error:  # Redis went away: export them from here instead
                logger.warning("tracegate: could not hand spans over (%s); exporting them", error)
                handoff.feed(spans)
                telemetry.flush(telemetry.config.rq_flush_timeout_s)
                return
        telemetry.flush(telemetry.config.rq_flush_timeout_s, spans=False)

    def perform_job(self, job: Job, queue: Queue, *args: Any, **kwargs: Any) -> Any:
        telemetry = self._telemetry
        began = time.perf_counter()
        in_horse = bool(getattr(self, "is_horse", False))
        handing_off = in_horse and telemetry.handoff is not None
        parent = os.getppid()
        if in_horse:
            telemetry.after_fork()
        if handing_off:
            telemetry.handoff.start_buffering()  # type: ignore[union-attr]
        token = open_unit()
        span = self._horse_span if in_horse else None
        if span is not None:
            pin(span.get_span_context(), self._pin_parent)
        else:
            span = self._start_consumer(job, queue.name)
        self._span, self._reported = span, False
        try:
            with self._activated(span):
                result = super().perform_job(job, queue, *args, **kwargs)  # type: ignore[misc]
                self._after_job(job)
                _log_job(job, span, began)
            return result
        finally:
            self._span = None
            span.end()
            unpin(token)
            # os._exit follows in a work horse: nothing buffered survives it.
            if handing_off and os.getppid() != parent:
                # The worker died while the job ran (SIGKILL, OOM): nobody would take
                # the spans over, so this work horse exports them itself.
                telemetry.handoff.release()  # type: ignore[union-attr]
                telemetry.flush(telemetry.config.rq_flush_timeout_s)
            elif handing_off:
                # Here, not in a thread with a deadline (a thread start and join cost
                # about 0.4 ms per job): the RPUSH is bounded by the Redis client's
                # socket timeout, as rq's own writes a moment before it were, and
                # Sentry's queue by the flush deadline.
                try:
                    self._hand_over_spans()
                except Exception:  # telemetry never fails a job
                    logger.exception("tracegate: could not hand the spans over")
            elif in_horse:
                telemetry.flush(telemetry.config.rq_flush_timeout_s)
            if in_horse:
                self._hand_over_counters()

    def _hand_over_counters(self) -> None:
        """In the work horse: what it lost (rare) goes to the worker, which reports it."""
        payload = self._telemetry.counters.dump()
        if payload is None:
            return
        key = self._handoff_key() + ":counters"
        try:
            with self.connection.pipeline(transaction=True) as pipe:
                pipe.rpush(key, payload)
                pipe.expire(key, 3600)
                pipe.execute()
        except Exception:
            logger.exception("tracegate: could not hand the work horse's counters over")

    def _start_consumer(
        self, job: Job, queue_name: str, start_time: int | None = None
    ) -> trace.Span:
        try:
            return self._consumer_span(job, queue_name, start_time)
        except Exception:  # a job whose carrier or fields are not what we wrote still runs
            logger.exception("tracegate: could not continue the trace of job %s", job.id)
            self._job_ctx = otel_context.Context()
            self._pin_parent = None
            return self._tracer.start_span(
                f"process {queue_name}", context=self._job_ctx, kind=SpanKind.CONSUMER
            )

    @contextmanager
    def _activated(self, span: trace.Span) -> Iterator[None]:
        """The span current, in the job's context: the request's baggage comes along."""
        token = otel_context.attach(trace.set_span_in_context(span, self._job_ctx))
        try:
            yield
        finally:
            otel_context.detach(token)

    def _consumer_span(self, job: Job, queue_name: str, start_time: int | None) -> trace.Span:
        config = self._telemetry.config
        stored = carrier(job)
        parent_ctx = self._telemetry.propagator.extract(stored)
        parent = trace.get_current_span(parent_ctx).get_span_context()
        links = [Link(parent, {"messaging.rq.link": "creation"})] if parent.is_valid else []
        ctx = parent_ctx
        if config.rq_delayed_links_only and stored.get(_SCHEDULED):
            ctx = otel_context.Context()
        attributes = _base_attributes(job, queue_name, "process")
        attributes["messaging.rq.job.attempt"] = self._attempt(job)
        attributes["messaging.consumer.group.name"] = self.name
        wait = _queue_wait_s(job)
        if wait is not None:
            attributes["messaging.rq.queue_wait_s"] = wait
        span = self._tracer.start_span(
            f"process {queue_name}",
            context=ctx,
            kind=SpanKind.CONSUMER,
            links=links,
            attributes=attributes,
            start_time=start_time,
        )
        is_child = ctx is parent_ctx and parent.is_valid
        self._pin_parent = parent.span_id if is_child else None
        pin(span.get_span_context(), self._pin_parent)
        self._job_ctx = parent_ctx  # its baggage, whichever parent the span took
        return span

    def _attempt(self, job: Job) -> int:
        counted = getattr(job, "_tracegate_attempt", None)
        if counted is None:  # a spawned work horse re-fetched the job
            try:
                counted = attempts(job)
            except Exception:
                counted = 0
        return int(counted) or 1

    def handle_exception(self, job: Job, *exc_info: Any) -> Any:
        try:
            error = exc_info[1] if len(exc_info) > 1 else None
            span = self._span
            if span is not None and isinstance(error, BaseException):
                span.record_exception(error)
                _fail(span, _error_type(error))
            self._report(job, exc_info=exc_info)
        except Exception:
            logger.exception("tracegate: could not report the failure of job %s", job.id)
        return super().handle_exception(job, *exc_info)  # type: ignore[misc]

    def _after_job(self, job: Job) -> None:
        # A job that returned rq.Retry until its retries ran out fails without an
        # exception: rq (>= 2.7) marks it FAILED and calls no failure handler.
        if self._reported:
            return
        try:
            status = job.get_status(refresh=False)
        except Exception:
            return
        if status == JobStatus.FAILED and self._span is not None:
            _fail(self._span, "rq.RetriesExhausted")
            self._report(
                job,
                synthetic=("RetriesExhausted", "the job returned Retry until no retries were left"),
            )

    def _report(
        self,
        job: Job,
        exc_info: tuple[Any, ...] | None = None,
        synthetic: tuple[str, str] | None = None,
        final: bool | None = None,
    ) -> None:
        if final is None:
            final = not (job.retries_left or 0) > 0
        self._reported = True
        report = final or self._telemetry.config.rq_report_every_attempt
        if self._span is not None:
            self._span.set_attribute("messaging.rq.job.final_attempt", final)
            if not report:
                SentryBridge.mark_reported(self._span, "retrying")
        if not report:
            return
        with sentry_sdk.new_scope() as scope:
            scope.set_tag("rq.job_id", job.id)
            scope.set_tag("rq.queue", job.origin)
            scope.set_tag("rq.function", _function(job))
            scope.set_tag("rq.attempt", str(self._attempt(job)))
            scope.set_tag("rq.final", "true" if final else "false")
            scope.set_context("rq", {"job_id": job.id, "queue": job.origin, "worker": self.name})
            if exc_info is not None:
                client = sentry_sdk.get_client()
                event, hint = event_from_exception(
                    exc_info, client.options, mechanism={"type": "rq", "handled": False}
                )
                sentry_sdk.capture_event(event, hint=hint)
            elif synthetic is not None:
                kind, message = synthetic
                module, _, name = kind.rpartition(".")
                sentry_sdk.capture_event(
                    {
                        "level": "error",
                        "exception": {
                            "values": [
                                {
                                    "type": name,
                                    "value": message,
                                    "module": module or "rq",
                                    "mechanism": {"type": "rq", "handled": False},
                                }
                            ]
                        },
                        "fingerprint": ["rq", kind, _function(job)],
                    }
                )

    # Parent side: the work horse died without reporting (SIGKILL, OOM, hard timeout).
    def handle_work_horse_killed(self, job: Job, retpid: Any, ret_val: Any, rusage: Any) -> Any:
        with self._signals_held():
            try:
                self._report_killed(job, ret_val)
            except Exception:
                logger.exception("tracegate: could not report the killed work horse of %s", job.id)
        return super().handle_work_horse_killed(job, retpid, ret_val, rusage)  # type: ignore[misc]

    def _report_killed(self, job: Job, ret_val: Any) -> None:
        if ret_val is None:
            kind, message = "JobTimeout", "the work horse ran past the job timeout and was killed"
        else:
            signum = os.WTERMSIG(ret_val) if os.WIFSIGNALED(ret_val) else None
            name = signal.Signals(signum).name if signum else f"status {ret_val}"
            kind, message = "WorkHorseKilled", f"the work horse died ({name})"
        self._report_lost(job, kind, message)

    def _report_lost(self, job: Job, kind: str, message: str) -> None:
        """A consumer span from the job's start, failed with `kind`, and its report."""
        started = _as_utc(job.started_at)
        start_ns = int(started.timestamp() * 1e9) if started else None
        outer = self._span  # rq 2.x SpawnWorker: the parent already traces the horse
        token = open_unit() if outer is None else None
        span = self._start_consumer(job, job.origin, start_time=start_ns)
        self._span, self._reported = span, False
        try:
            span.add_event("exception", {"exception.type": kind, "exception.message": message})
            _fail(span, f"rq.{kind}")
            with self._activated(span):
                self._report(job, synthetic=(kind, message))
        finally:
            if outer is None:
                self._span = None
                span.end()
                unpin(token)


def _log_job(job: Job, span: trace.Span, began: float) -> None:
    """One line per job, written while its consumer span is current (so it has its ids)."""
    if not jobs_log.isEnabledFor(logging.INFO):
        return
    attributes = getattr(span, "attributes", None) or {}
    try:
        raw = job.get_status(refresh=False)
        status = str(getattr(raw, "value", raw))
    except Exception:
        status = "unknown"
    duration_ms = round((time.perf_counter() - began) * 1000, 2)
    jobs_log.info(
        "job %s %s %s %sms",
        job.id,
        _function(job),
        status,
        duration_ms,
        extra={
            "job_id": job.id,
            "queue": job.origin,
            "function": _function(job),
            "job_status": status,
            "attempt": attributes.get("messaging.rq.job.attempt"),
            "duration_ms": duration_ms,
        },
    )


def _error_type(error: BaseException) -> str:
    """The exception's class name as semantic conventions want it: qualified by module."""
    cls = type(error)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _fail(span: trace.Span, error_type: str) -> None:
    span.set_status(Status(StatusCode.ERROR, error_type))
    span.set_attribute("error.type", error_type)


def _as_utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    # rq 2.0 reads naive UTC datetimes back from Redis.
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _queue_wait_s(job: Job) -> float | None:
    enqueued = _as_utc(job.enqueued_at)
    if enqueued is None:
        return None
    return max(0.0, round(time.time() - enqueued.timestamp(), 6))


class TracedWorker(_TracedWorkerMixin, Worker):
    """rq's forking Worker, traced."""

    _starts_horse_span = True


class TracedSimpleWorker(_TracedWorkerMixin, SimpleWorker):
    """rq's SimpleWorker (no fork), traced."""


_RQ_MAJOR = int(rq_version.split(".")[0])


if SpawnWorker is not None:

    class TracedSpawnWorker(_TracedWorkerMixin, SpawnWorker):
        """rq's SpawnWorker, traced.

        On rq >= 3 the spawned work horse rebuilds this class, sets up its own
        telemetry and traces the job like a forked one. On rq 2.x the horse runs rq's
        plain classes, so the consumer span is made here, in the parent, around the
        horse's whole life, and the outcome is read back from Redis.
        """

        def execute_job(self, job: Job, queue: Queue) -> Any:
            if _RQ_MAJOR >= 3:
                return super().execute_job(job, queue)
            self._count_attempt(job)  # before the span, which carries the number
            token = open_unit()
            span = self._start_consumer(job, queue.name)
            self._span, self._reported = span, False
            try:
                with self._activated(span):
                    result = super().execute_job(job, queue)
                    self._read_outcome(job)
                return result
            finally:
                self._span = None
                span.end()
                unpin(token)

        def _start_consumer(
            self, job: Job, queue_name: str, start_time: int | None = None
        ) -> trace.Span:
            if _RQ_MAJOR < 3 and self._span is not None:
                return self._span  # a killed horse: report on the span around it
            return super()._start_consumer(job, queue_name, start_time)

        def _read_outcome(self, job: Job) -> None:
            if self._reported or self._span is None:
                return
            job.refresh()
            status = job.get_status(refresh=False)
            if status not in (JobStatus.FAILED, JobStatus.QUEUED, JobStatus.SCHEDULED):
                return
            result = job.latest_result()
            if result is None or result.type == result.Type.SUCCESSFUL:
                if status != JobStatus.FAILED:
                    # Requeued while it ran: a failed attempt, whose exception rq 2.x
                    # keeps nowhere when a retry follows.
                    _fail(self._span, "rq.AttemptFailed")
                    self._report(
                        job,
                        synthetic=("AttemptFailed", "the attempt failed; a retry follows"),
                        final=False,
                    )
                return
            lines = (result.exc_string or "").strip().splitlines()
            kind, _, message = (lines[-1] if lines else "Error").partition(": ")
            self._span.add_event(
                "exception",
                {
                    "exception.type": kind,
                    "exception.message": message,
                    "exception.stacktrace": result.exc_string or "",
                },
            )
            _fail(self._span, kind)
            self._report(job, synthetic=(kind, message), final=status == JobStatus.FAILED)

else:  # pragma: no cover
    TracedSpawnWorker = None  # type: ignore[assignment,misc]
