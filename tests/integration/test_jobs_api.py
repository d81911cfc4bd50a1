"""The job API's answers to bad input, missing keys and a Redis that is down — each
checked against the real Redis the job would have gone to."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.harness import GatewayFactory, gateways

TRACE = "8bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE}-30f067aa0ba902b7-01"
TRACED = {"traceparent": TRACEPARENT}


@pytest.fixture
def make_gateway(redis_url: str) -> Iterator[GatewayFactory]:
    with gateways({"REDIS_URL": redis_url, "TRACEGATE_DEMO_TASKS": "1"}) as make:
        yield make


@pytest.fixture
def connection(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as client:
        yield client


def _queued(connection: redis.Redis) -> int:
    return int(connection.llen("rq:queue:default"))


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json"),  # deeper than Python recurses
        (b'{"task": "no_such_task"}', 404, "unknown_task"),
        (b'{"task": "os.system", "args": ["true"]}', 404, "unknown_task"),
        (b'{"task": "echo", "args": {"a": 1}}', 400, "invalid_arguments"),
        (b'{"task": "sleep", "kwargs": {"minutes": 1}}', 422, "invalid_arguments"),
        (b'{"task": "sleep", "args": [1, 2, 3]}', 422, "invalid_arguments"),
        (b'{"task": "echo", "queue": "../../etc"}', 400, "invalid_arguments"),
        (b'{"task": "echo", "queue": "other"}', 403, "queue_not_allowed"),
        (b'{"task": "echo", "delay_s": -1}', 400, "invalid_arguments"),
        (b'{"task": "echo", "delay_s": "soon"}', 400, "invalid_arguments"),
        (b'{"task": "echo", "retry": 1000}', 400, "invalid_arguments"),
        (b'{"task": "echo", "retry": {"max": 2, "interval": [-5]}}', 400, "invalid_arguments"),
    ],
)
def test_bad_requests_get_an_envelope_and_enqueue_nothing(
    make_gateway: GatewayFactory, connection: redis.Redis, body: bytes, status: int, code: str
) -> None:
    response = make_gateway().client.post(
        "/v1/jobs", data=body, content_type="application/json", headers={"traceparent": TRACEPARENT}
    )
    assert response.status_code == status
    assert response.json is not None and response.json["error"]["code"] == code
    assert response.json["error"]["trace_id"] == "8bf92f3577b34da6a3ce929d0e0e4736"
    assert response.headers["X-Trace-ID"] == "8bf92f35-77b3-4da6-a3ce-929d0e0e4736"
    # No stack traces, no settings in error bodies.
    text = response.get_data(as_text=True)
    assert "Traceback" not in text and "redis://" not in text and "File " not in text
    assert set(response.json) == {"error"}
    assert set(response.json["error"]) == {"code", "message", "trace_id"}
    assert _queued(connection) == 0 and connection.keys("rq:job:*") == []


def test_accepted_job_is_in_redis_with_its_carrier(
    make_gateway: GatewayFactory, connection: redis.Redis
) -> None:
    response = make_gateway().client.post(
        "/v1/jobs",
        json={
            "task": "echo",
            "args": [1],
            "kwargs": {"k": "v"},
            "retry": {"max": 2, "interval": 1},
        },
        headers={"traceparent": TRACEPARENT},
    )
    assert response.status_code == 202 and response.json is not None
    assert response.headers["Location"] == f"/v1/jobs/{response.json['job_id']}"
    assert _queued(connection) == 1
    assert connection.lrange("rq:queue:default", 0, -1) == [response.json["job_id"].encode()]


def test_unknown_job_is_404(make_gateway: GatewayFactory) -> None:
    client = make_gateway().client
    for job_id in ("does-not-exist", "bad id with spaces"):
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 404 and response.json is not None
        assert response.json["error"]["code"] in ("job_not_found", "not_found")


def test_redis_down_is_503_and_nothing_is_acknowledged(free_port: int) -> None:
    with gateways(
        {"REDIS_URL": f"redis://127.0.0.1:{free_port}/0", "TRACEGATE_DEMO_TASKS": "1"}
    ) as make:
        client = make().client
        response = client.post(
            "/v1/jobs", json={"task": "echo"}, headers={"traceparent": TRACEPARENT}
        )
        assert response.status_code == 503 and response.json is not None
        assert response.json["error"]["code"] == "queue_unavailable"
        assert "job_id" not in response.json
        status = client.get("/v1/jobs/some-job")
        assert status.status_code == 503


def test_oversized_body_is_413(redis_url: str, connection: redis.Redis) -> None:
    env = {"REDIS_URL": redis_url, "TRACEGATE_DEMO_TASKS": "1", "TRACEGATE_MAX_BODY_BYTES": "1000"}
    with gateways(env) as make:
        response = make().client.post(
            "/v1/jobs", json={"task": "echo", "args": ["x" * 5000]}, headers=TRACED
        )
    assert response.status_code == 413 and response.json is not None
    assert response.json["error"]["code"] == "request_entity_too_large"
    assert response.json["error"]["trace_id"] == TRACE
    assert _queued(connection) == 0


def test_api_keys_guard_the_job_routes(redis_url: str, connection: redis.Redis) -> None:
    env = {"REDIS_URL": redis_url, "TRACEGATE_DEMO_TASKS": "1", "TRACEGATE_API_KEYS": "k1,k2"}
    with gateways(env) as make:
        client = make().client
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Basic k1"},
            {"Authorization": "Bearer k1k2"},
        ):
            response = client.post("/v1/jobs", json={"task": "echo"}, headers={**headers, **TRACED})
            assert response.status_code == 401 and response.json is not None
            assert response.json["error"]["code"] == "unauthorized"
            assert response.json["error"]["trace_id"] == TRACE
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert _queued(connection) == 0
        ok = client.post("/v1/jobs", json={"task": "echo"}, headers={"Authorization": "Bearer k2"})
        assert ok.status_code == 202
        assert client.get("/v1/traces").status_code == 401  # the trace store too
        assert client.get("/v1/traces", headers={"Authorization": "Bearer k1"}).status_code == 200
        assert client.get("/healthz").status_code == 200


def test_demo_tasks_are_off_unless_asked_for(redis_url: str) -> None:
    with gateways({"REDIS_URL": redis_url}) as make:
        response = make().client.post("/v1/jobs", json={"task": "echo"})
    assert response.status_code == 404


def test_a_job_no_replica_confirmed_is_not_acknowledged(
    redis_url: str, connection: redis.Redis
) -> None:
    env = {
        "REDIS_URL": redis_url,
        "TRACEGATE_DEMO_TASKS": "1",
        "TRACEGATE_REDIS_WAIT_REPLICAS": "1",
    }
    with gateways(env) as make:
        response = make().client.post("/v1/jobs", json={"task": "echo"}, headers=TRACED)
    # The test's Redis has no replica: WAIT gives up after its second.
    assert response.status_code == 503 and response.json is not None
    error = response.json["error"]
    assert error["code"] == "queue_unavailable" and error["trace_id"] == TRACE
    job_id = error["message"].split()[1]
    assert connection.exists(f"rq:job:{job_id}")  # it was queued, and says so: it may run
