"""The local trace store: spans of the gateway and its workers meet in Redis, with the
Sentry events they caused — with or without a DSN or a collector."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness import Gateway, gateways
from tests.integration.test_rq import ROOT, run_worker
from tests.peers.envelope import EnvelopeReceiver

TRACE = "9bf92f3577b34da6a3ce929d0e0e4736"
TRACE_UUID = "9bf92f35-77b3-4da6-a3ce-929d0e0e4736"
PARENT = "40f067aa0ba902b7"


@pytest.fixture
def env(redis_url: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "REDIS_URL": redis_url,
        "TRACEGATE_DEMO_TASKS": "1",
        "OTEL_BSP_SCHEDULE_DELAY": "50",
    }


@pytest.fixture
def gateway(env: dict[str, str]) -> Iterator[Gateway]:
    with gateways(env) as make:
        yield make()


def _trace(gateway: Gateway, trace_id: str = TRACE) -> dict[str, Any]:
    response = gateway.client.get(f"/v1/traces/{trace_id}")
    assert response.status_code == 200, response.get_json()
    body: dict[str, Any] = response.get_json()
    return body


@pytest.mark.parametrize("worker_class", ["fork", "spawn"])
def test_request_producer_and_worker_spans_in_one_tree_without_dsn_or_collector(
    worker_class: str, gateway: Gateway, env: dict[str, str]
) -> None:
    headers = {"traceparent": f"00-{TRACE}-{PARENT}-01"}
    created = gateway.client.post("/v1/jobs", json={"task": "fail"}, headers=headers).get_json()
    gateway.flush()
    run_worker({**env, "OTEL_SERVICE_NAME": "tracegate-worker"}, worker_class)
    gateway.flush()

    trace = _trace(gateway)
    assert trace["trace_id_uuid"] == TRACE_UUID
    spans = {s["name"]: s for s in trace["spans"]}
    server, producer, consumer = (
        spans["POST /v1/jobs"],
        spans["send default"],
        spans["process default"],
    )
    assert server["kind"] == "SERVER" and server["parent_span_id"] == PARENT
    assert producer["kind"] == "PRODUCER" and producer["parent_span_id"] == server["span_id"]
    assert consumer["kind"] == "CONSUMER" and consumer["parent_span_id"] == producer["span_id"]
    assert (server["service"], consumer["service"]) == ("tracegate-test", "tracegate-worker")
    assert (
        consumer["status"] == "ERROR"
        and consumer["attributes"]["messaging.message.id"] == created["job_id"]
    )
    # No DSN anywhere: the worker's Sentry error is still produced, kept and linked.
    (event,) = trace["sentry_events"]
    assert event["span_id"] == consumer["span_id"] and event["title"].startswith("DemoFailure")
    assert consumer["sentry_event_ids"] == [event["event_id"]]

    listed = gateway.client.get("/v1/traces").get_json()["traces"]
    summary = next(t for t in listed if t["trace_id"] == TRACE)
    assert summary["root_name"] == "POST /v1/jobs" and summary["service"] == "tracegate-test"
    assert summary["span_count"] == len(trace["spans"]) and summary["error_count"] == 1
    assert summary["event_count"] == 1 and summary["duration_ms"] > 0
    assert _trace(gateway, TRACE_UUID)["spans"] == trace["spans"]  # either spelling


def test_events_with_a_dsn_go_to_sentry_and_to_the_store(
    redis_url: str, envelope_receiver: EnvelopeReceiver
) -> None:
    with gateways({"REDIS_URL": redis_url, "SENTRY_DSN": envelope_receiver.dsn}) as make:
        gateway = make()
        gateway.client.get("/example/error", headers={"traceparent": f"00-{TRACE}-{PARENT}-01"})
        gateway.flush()
        sent = envelope_receiver.wait_for(lambda e: "exception" in e, item_type="event")
        (kept,) = _trace(gateway)["sentry_events"]
    assert kept["event_id"] == sent["event_id"] and kept["level"] == "error"


def test_store_is_bounded_and_unknown_traces_are_404(env: dict[str, str]) -> None:
    with gateways({**env, "TRACEGATE_STORE_MAX_TRACES": "3"}) as make:
        gateway = make()
        for n in range(5):
            gateway.client.get("/example", headers={"traceparent": f"00-{n + 1:032x}-{PARENT}-01"})
            gateway.flush()
        listed = gateway.client.get("/v1/traces?limit=10").get_json()["traces"]
        assert [t["trace_id"] for t in listed] == [f"{n:032x}" for n in (5, 4, 3)]
        assert gateway.client.get(f"/v1/traces/{1:032x}").status_code == 404
        for bad in ("nonsense", "0" * 32, "<script>"):
            response = gateway.client.get(f"/v1/traces/{bad}")
            assert (
                response.status_code == 404
                and response.get_json()["error"]["code"] == "trace_not_found"
            )
        assert gateway.client.get("/v1/traces?limit=0").status_code == 400
        # Looking at traces makes none: the same three are still the newest.
        again = gateway.client.get("/v1/traces?limit=10").get_json()["traces"]
        assert [t["trace_id"] for t in again] == [f"{n:032x}" for n in (5, 4, 3)]
        assert gateway.client.get("/v1/traces?limit=%C2%B2").status_code == 400
