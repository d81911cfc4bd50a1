"""Backends that fail: Sentry and the collector down, hanging, rate limiting, erroring.

The gateway runs in-process with sentry-sdk's real HTTP transport and the real
OTLP/HTTP exporter; their receivers are real HTTP servers that a test makes fail
(`Faults`) and heal. Each test holds three things: requests keep their latency (all
sending happens on background threads; the stated bound is 0.5 s per request), what
is lost is counted on `/metrics`, and data flows again once the backend is back.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest

from tests.harness import Gateway, gateways
from tests.peers import EnvelopeReceiver, OTLPReceiver, free_port
from tests.peers.base import Faults

REQUEST_BOUND_S = 0.5


def counter(gateway: Gateway, name: str, **labels: str) -> int:
    """The sum of the `/metrics` series of `name` whose labels include `labels`."""
    response = gateway.client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    total = 0
    for line in response.get_data(as_text=True).splitlines():
        found = re.fullmatch(rf"tracegate_{name}_total\{{(.*)\}} (\d+)", line)
        if found is None:
            continue
        pairs = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', found[1]))
        if all(pairs.get(k) == v for k, v in labels.items()):
            total += int(found[2])
    return total


def timed_requests(gateway: Gateway, path: str, count: int) -> float:
    """Send `count` requests; the slowest one's duration in seconds."""
    slowest = 0.0
    for _ in range(count):
        started = time.perf_counter()
        response = gateway.client.get(path)
        slowest = max(slowest, time.perf_counter() - started)
        assert response.status_code < 500 or path.endswith("/error"), response.get_data()
    return slowest


def wait_for(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture
def faults() -> Iterator[Faults]:
    faults = Faults()
    yield faults
    faults.heal()  # no handler thread stays parked after the test


# -- Sentry ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    ["closed_port", "status_503", "rate_limited_429", "hanging"],
)
def test_sentry_failing_costs_requests_nothing_and_is_counted(fault: str, faults: Faults) -> None:
    with EnvelopeReceiver(faults=faults) as sentry, gateways({}) as make:
        dsn = sentry.dsn
        if fault == "closed_port":
            dsn = f"http://public@127.0.0.1:{free_port()}/42"
        elif fault == "status_503":
            faults.fail(503)
        elif fault == "rate_limited_429":
            faults.fail(429, {"Retry-After": "1"})
        else:
            faults.hang()
        gateway = make(SENTRY_DSN=dsn)
        # Every /example request captures one Sentry message event: more than the
        # transport's queue (100) holds while a hanging Sentry holds up its sender.
        slowest = timed_requests(gateway, "/example", 130)
        assert slowest < REQUEST_BOUND_S, f"a request took {slowest:.3f}s while Sentry failed"
        if fault != "closed_port":
            wait_for(lambda: faults.requests >= 1)  # sentry-sdk did try to send
        wait_for(lambda: counter(gateway, "events_dropped") > 0)
        if fault == "hanging":
            # The transport's queue is bounded: what does not fit is dropped and counted.
            assert counter(gateway, "events_dropped", reason="queue_overflow") > 0
        if fault == "rate_limited_429":
            # Each reason is counted by its own thread (the sender records the 429, the
            # capturing request the back-off that follows), so wait for both.
            wait_for(lambda: counter(gateway, "events_dropped", reason="rate_limited") >= 1)
            wait_for(lambda: counter(gateway, "events_dropped", reason="ratelimit_backoff") > 0)
        if fault == "closed_port":
            return  # nothing to heal: the DSN points nowhere
        # Sentry is back: the next event arrives (after the 429's one-second back-off).
        faults.heal()
        gateway.telemetry.flush(35)  # the backlog drains (a hung send is answered first)
        time.sleep(1.2 if fault == "rate_limited_429" else 0)
        sentry.clear()
        response = gateway.client.get("/example")
        trace_id = response.headers["X-Trace-ID"].replace("-", "")
        sentry.wait_for(
            lambda e: e["contexts"]["trace"]["trace_id"] == trace_id,
            item_type="event",
        )


def test_every_transaction_sentry_could_not_take_is_accounted_for(faults: Faults) -> None:
    # While Sentry hangs, sentry-sdk's transport queue (100) fills: each transaction is
    # either delivered once Sentry is back or reported lost — on /metrics and in the
    # client reports sentry-sdk sends to Sentry — never lost silently.
    made = 160
    with EnvelopeReceiver(faults=faults) as sentry, gateways({}) as make:
        faults.hang()
        gateway = make(SENTRY_DSN=sentry.dsn)
        timed_requests(gateway, "/no-such-page", made)  # a 404: a transaction, no error
        faults.heal()
        gateway.telemetry.flush(35)
        lost = counter(gateway, "events_dropped", reason="queue_overflow")

        def reported(category: str) -> int:
            return sum(
                entry["quantity"]
                for item in sentry.items("client_report")
                for entry in (item.json or {}).get("discarded_events", [])
                if entry["category"] == category and entry["reason"] == "queue_overflow"
            )

        wait_for(lambda: reported("transaction") >= lost > 0)
        delivered = [t for t in sentry.transactions() if t["transaction"] != "/metrics"]
        assert delivered and len(delivered) + lost == made
        assert reported("transaction") == lost
        assert reported("span") == lost  # each had its server span alone


# -- the collector --------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["closed_port", "status_503", "hanging"])
def test_collector_failing_costs_requests_nothing_and_is_counted(
    fault: str, faults: Faults, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The SDK's batch processor reads its bounds from the process environment.
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "32")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "16")
    with OTLPReceiver(faults=faults) as collector, gateways({}) as make:
        endpoint = collector.endpoint
        if fault == "closed_port":
            endpoint = f"http://127.0.0.1:{free_port()}"
        elif fault == "status_503":
            faults.fail(503)
        else:
            faults.hang()
        gateway = make(
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_EXPORTER_OTLP_TIMEOUT="300",  # milliseconds, as OpenTelemetry spells it
        )
        slowest = timed_requests(gateway, "/example", 300)
        assert slowest < REQUEST_BOUND_S, f"a request took {slowest:.3f}s while OTLP failed"
        # Exports give up (each after its 0.3 s timeout) and are counted.
        wait_for(
            lambda: counter(gateway, "spans_dropped", exporter="otlp", reason="export_failed") > 0,
            timeout=15,
        )
        overflowed = counter(gateway, "spans_dropped", exporter="otlp", reason="queue_full")
        if fault == "hanging":
            # 300 spans against a queue of 32 that drains 16 per 0.3 s: it stays bounded.
            assert overflowed > 0
        if fault == "closed_port":
            return
        faults.heal()
        response = gateway.client.get("/example")
        trace_id = response.headers["X-Trace-ID"].replace("-", "")
        found = collector.wait_for_span(lambda s: s.trace_id_hex == trace_id, timeout=15)
        assert found.kind == 2  # SERVER


# -- hostile callers ------------------------------------------------------------------


def test_invalid_inbound_headers_are_counted() -> None:
    with gateways({}) as make:
        gateway = make()
        valid = {"traceparent": f"00-{'ab' * 16}-{'cd' * 8}-01"}
        assert gateway.client.get("/healthz", headers=valid).status_code == 200
        for _ in range(2):
            response = gateway.client.get(
                "/example",
                headers={
                    "traceparent": "00-XYZ-1-01",
                    "sentry-trace": "not-a-sentry-trace",
                    "X-Trace-ID": "0" * 32,  # all zeros: never adopted
                },
            )
            assert response.status_code == 200
        assert counter(gateway, "inbound_headers_invalid", header="traceparent") == 2
        assert counter(gateway, "inbound_headers_invalid", header="sentry-trace") == 2
        assert counter(gateway, "inbound_headers_invalid", header="x-trace-id") == 2
