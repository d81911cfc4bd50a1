"""Untrusted callers cannot force sampling (`TRACEGATE_INBOUND_SAMPLED[_FROM]`).

The sampler here never samples a new trace (`parentbased_always_off`), so a sampled
span can only come from obeying the caller's flag. What the OTLP receiver and the
Sentry receiver got shows whose flag was obeyed; the trace is continued either way.
"""

from __future__ import annotations

import secrets

import pytest

from otel.config import ConfigError, TelemetryConfig
from tests.harness import GatewayFactory
from tests.peers import EnvelopeReceiver, OTLPReceiver

TRUSTED = "10.1.2.3"
UNTRUSTED = "203.0.113.9"


def _call(make: GatewayFactory, remote_addr: str, **env: str) -> tuple[str, str]:
    gateway = make(OTEL_TRACES_SAMPLER="parentbased_always_off", **env)
    trace_id = secrets.token_hex(16)
    response = gateway.client.get(
        "/example",
        headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"},
        environ_base={"REMOTE_ADDR": remote_addr},
    )
    assert response.status_code == 200
    gateway.flush()
    return trace_id, response.headers["traceresponse"]


@pytest.mark.parametrize(
    ("remote_addr", "obeyed"),
    [(TRUSTED, True), (UNTRUSTED, False), ("::ffff:10.1.2.3", True), ("garbage", False)],
)
def test_flag_is_obeyed_only_from_listed_networks(
    make_gateway: GatewayFactory,
    otlp_receiver: OTLPReceiver,
    envelope_receiver: EnvelopeReceiver,
    remote_addr: str,
    obeyed: bool,
) -> None:
    trace_id, traceresponse = _call(
        make_gateway, remote_addr, TRACEGATE_INBOUND_SAMPLED_FROM="10.0.0.0/8, 192.168.0.0/16"
    )
    assert traceresponse.split("-")[1] == trace_id  # continued, whoever called
    assert traceresponse.endswith("-01" if obeyed else "-00")
    # Errors and messages are sent sampled or not, linked to the caller's trace.
    event = envelope_receiver.wait_for(
        lambda e: e["contexts"]["trace"]["trace_id"] == trace_id, item_type="event"
    )
    assert event["tags"]["trace_id"].replace("-", "") == trace_id
    spans = [s for s in otlp_receiver.spans if s.trace_id_hex == trace_id]
    transactions = [
        t
        for t in envelope_receiver.transactions()
        if t["contexts"]["trace"]["trace_id"] == trace_id
    ]
    if obeyed:
        assert [s.kind for s in spans] == [2]  # the server span
        assert len(transactions) == 1
    else:
        assert spans == [] and transactions == []


def test_ignore_lets_the_sampler_decide_for_every_caller(
    make_gateway: GatewayFactory, otlp_receiver: OTLPReceiver
) -> None:
    # Here the sampler samples every new trace: a caller's "not sampled" has no say
    # either, which shows on the exported span (with `honour` it would not exist).
    gateway = make_gateway(
        OTEL_TRACES_SAMPLER="parentbased_always_on", TRACEGATE_INBOUND_SAMPLED="ignore"
    )
    trace_id = secrets.token_hex(16)
    response = gateway.client.get(
        "/example",
        headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-00"},
        environ_base={"REMOTE_ADDR": TRUSTED},
    )
    gateway.flush()
    assert response.headers["traceresponse"].split("-")[1] == trace_id
    assert response.headers["traceresponse"].endswith("-01")
    otlp_receiver.wait_for_span(lambda s: s.trace_id_hex == trace_id and s.kind == 2)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"TRACEGATE_INBOUND_SAMPLED_FROM": "10.0.0.0/33"}, "is not a network"),
        (
            {"TRACEGATE_INBOUND_SAMPLED_FROM": "10.0.0.0/8", "TRACEGATE_INBOUND_SAMPLED": "ignore"},
            "only with TRACEGATE_INBOUND_SAMPLED=honour",
        ),
    ],
)
def test_bad_trust_settings_are_refused(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        TelemetryConfig.from_env(env)
