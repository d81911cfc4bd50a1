"""`POST /v1/jobs` and `GET /v1/jobs/<id>`: enqueue registered tasks, report on jobs.

A job is acknowledged (202) only after Redis has it; Redis down is 503
`queue_unavailable`. The job carries the request's trace in `meta["otel"]`, so the
worker's spans and Sentry events share the request's trace id.
"""

from __future__ import annotations

import math
import re
from datetime import timedelta
from typing import Any

import flask
import redis
from rq import Retry
from rq.exceptions import NoSuchJobError
from rq.job import Job

from gateway.auth import require_api_key
from gateway.errors import ApiError
from gateway.settings import Settings
from gateway.tasks import Registry
from otel import ids
from otel.rq import TracedJob, TracedQueue, attempts, carrier_trace_id

__all__ = ["blueprint"]

blueprint = flask.Blueprint("jobs", __name__)

_QUEUE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_MAX_DELAY_S = 7 * 24 * 3600
_MAX_RETRIES = 25
_REPLICA_WAIT_MS = 1000


def _settings() -> Settings:
    settings: Settings = flask.current_app.extensions["tracegate.settings"]
    return settings


def _connection() -> redis.Redis:
    connection: redis.Redis = flask.current_app.extensions["tracegate.redis"]
    return connection


blueprint.before_request(require_api_key)


@blueprint.post("/v1/jobs")
def create_job() -> tuple[flask.Response, int, dict[str, str]]:
    raw = flask.request.get_data(cache=True)  # over the size limit: 413, however sent
    try:
        body = flask.json.loads(raw) if raw else None
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python goes
        body = None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    name = body.get("task")
    if not isinstance(name, str) or not name:
        raise ApiError(400, "invalid_arguments", "'task' must be a task name")
    registry: Registry = flask.current_app.extensions["tracegate.tasks"]
    task = registry.get(name)
    if task is None:
        raise ApiError(404, "unknown_task", "no task of that name is registered")
    args = body.get("args", [])
    kwargs = body.get("kwargs", {})
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise ApiError(400, "invalid_arguments", "'args' must be a list and 'kwargs' an object")
    problem = task.check_arguments(args, kwargs)
    if problem:
        raise ApiError(422, "invalid_arguments", f"arguments do not fit the task: {problem}")
    queue_name = body.get("queue", "default")
    if not isinstance(queue_name, str) or not _QUEUE.match(queue_name):
        raise ApiError(400, "invalid_arguments", "'queue' must be 1-64 of A-Z a-z 0-9 _ . -")
    if queue_name not in _settings().queues:
        raise ApiError(403, "queue_not_allowed", "'queue' is not one of the configured queues")
    delay = _delay(body.get("delay_s"))
    retry = _retry(body.get("retry"))

    queue = TracedQueue(queue_name, connection=_connection())
    options: dict[str, Any] = {
        "retry": retry,
        "result_ttl": 24 * 3600,
        "failure_ttl": 7 * 24 * 3600,
    }
    try:
        if delay:
            # args=/kwargs= keep the client's arguments away from rq's own options
            # (job_id, meta, on_success …), which enqueue_in takes as keywords too.
            job = queue.enqueue_in(
                timedelta(seconds=delay), task.rq_path, args=args, kwargs=kwargs, **options
            )
        else:
            job = queue.enqueue_call(task.rq_path, args=args, kwargs=kwargs, **options)
    except (redis.RedisError, OSError) as error:
        raise ApiError(503, "queue_unavailable", "the job queue cannot be reached") from error
    _await_replicas(queue.connection, job.id)
    body = {**_trace_ids(job), "job_id": job.id, "status_url": f"/v1/jobs/{job.id}"}
    return flask.jsonify(body), 202, {"Location": body["status_url"]}


def _await_replicas(connection: redis.Redis, job_id: str) -> None:
    """With TRACEGATE_REDIS_WAIT_REPLICAS, a job is acknowledged only once that many
    replicas have it, so a failover to one of them cannot lose it."""
    wanted = _settings().telemetry.redis_wait_replicas
    if not wanted:
        return
    try:
        confirmed = int(connection.wait(wanted, _REPLICA_WAIT_MS))
    except (redis.RedisError, OSError):
        confirmed = -1
    if confirmed < wanted:
        # Not acknowledged: the job may still run (at least once), so say which it is.
        raise ApiError(
            503,
            "queue_unavailable",
            f"job {job_id} is not on {wanted} replica(s) yet; it may still run",
        )


def _delay(value: Any) -> float:
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ApiError(400, "invalid_arguments", "'delay_s' must be a number of seconds")
    if not 0 <= value <= _MAX_DELAY_S:
        raise ApiError(400, "invalid_arguments", f"'delay_s' must be between 0 and {_MAX_DELAY_S}")
    return float(value)


def _retry(value: Any) -> Retry | None:
    if value is None:
        return None
    interval: Any = 0
    count = value
    if isinstance(value, dict):
        count, interval = value.get("max"), value.get("interval", 0)
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= _MAX_RETRIES:
        raise ApiError(
            400, "invalid_arguments", f"'retry' must be 0-{_MAX_RETRIES} or {{max, interval}}"
        )
    intervals = interval if isinstance(interval, list) else [interval]
    if not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= 3600 for i in intervals
    ):
        raise ApiError(400, "invalid_arguments", "'retry.interval' must be seconds (0-3600)")
    return (
        Retry(max=count, interval=intervals if isinstance(interval, list) else interval)
        if count
        else None
    )


def _trace_ids(job: Job) -> dict[str, str | None]:
    trace_id = carrier_trace_id(job)
    if trace_id is None:
        return {"trace_id": None, "trace_id_uuid": None}
    return {"trace_id": ids.trace_id_hex(trace_id), "trace_id_uuid": ids.trace_id_uuid(trace_id)}


@blueprint.get("/v1/jobs/<job_id>")
def get_job(job_id: str) -> flask.Response:
    if not _JOB_ID.match(job_id):
        raise ApiError(404, "job_not_found", "no job with that id")
    try:
        job = TracedJob.fetch(job_id, connection=_connection())
        status = job.get_status(refresh=False)
        body: dict[str, Any] = {
            "job_id": job.id,
            "status": str(status.value if hasattr(status, "value") else status),
            **_trace_ids(job),
            "queue": job.origin,
            "attempts": attempts(job),
            "enqueued_at": _iso(job.enqueued_at),
            "started_at": _iso(job.started_at),
            "ended_at": _iso(job.ended_at),
        }
        result = job.latest_result()
    except NoSuchJobError as error:
        raise ApiError(404, "job_not_found", "no job with that id") from error
    except (redis.RedisError, OSError) as error:
        raise ApiError(503, "queue_unavailable", "the job queue cannot be reached") from error
    if result is not None and result.type == result.Type.SUCCESSFUL:
        body["result"] = _jsonable(result.return_value)
    elif result is not None:
        lines = (result.exc_string or "").strip().splitlines()
        body["error"] = lines[-1] if lines else "the job failed"
    return flask.jsonify(body)


def _iso(moment: Any) -> str | None:
    return moment.isoformat() if moment is not None else None


def _jsonable(value: Any) -> Any:
    try:
        flask.json.dumps(value)
        return value
    except TypeError:
        return repr(value)
