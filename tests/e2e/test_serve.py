"""`tracegate serve` under gunicorn with two worker processes keeps every trace whole."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.peers import EnvelopeReceiver, OTLPReceiver

TRACEGATE = str(Path(sys.executable).with_name("tracegate"))
ROOT = Path(__file__).resolve().parents[2]


def gunicorn_settings() -> dict[str, object]:
    from gunicorn.config import Config

    return dict(Config().settings)


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, dict(response.headers), response.read()


@pytest.fixture(params=["tracegate serve", "gunicorn -c config/gunicorn.conf.py"])
def served(
    request: pytest.FixtureRequest,
    free_port: int,
    envelope_receiver: EnvelopeReceiver,
    otlp_receiver: OTLPReceiver,
) -> Iterator[str]:
    if request.param == "tracegate serve":
        args = [TRACEGATE, "serve", "--port", str(free_port), "--workers", "2", "--threads", "1"]
    else:  # your own gunicorn, with the example configuration
        gunicorn = str(Path(sys.executable).with_name("gunicorn"))
        config = str(ROOT / "config" / "gunicorn.conf.py")
        args = [gunicorn, "-c", config, "--bind", f"127.0.0.1:{free_port}", "--threads", "1"]
        if "control_socket_disable" in gunicorn_settings():
            args.append("--no-control-socket")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "SENTRY_DSN": envelope_receiver.dsn,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    process = subprocess.Popen(
        args,
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{free_port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if _get(base + "/healthz")[0] == 200:
                break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            output = process.stdout.read().decode() if process.stdout else ""
            process.kill()
            pytest.fail(f"{request.param} did not start:\n{output}")
        time.sleep(0.1)
    try:
        yield base
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_continuity_across_two_gunicorn_workers(
    served: str, envelope_receiver: EnvelopeReceiver, otlp_receiver: OTLPReceiver
) -> None:
    sent: dict[str, str] = {}

    def call(_: int) -> None:
        trace_id, parent = secrets.token_hex(16), secrets.token_hex(8)
        status, headers, _body = _get(
            served + "/example", {"traceparent": f"00-{trace_id}-{parent}-01"}
        )
        assert status == 200 and headers["traceresponse"].startswith(f"00-{trace_id}-")
        sent[trace_id] = parent

    pids: set[int] = set()
    deadline = time.monotonic() + 30
    with ThreadPoolExecutor(max_workers=6) as pool:
        while len(pids) < 2 and time.monotonic() < deadline:
            list(pool.map(call, range(12)))
            time.sleep(0.3)
            pids = {int(s.resource["process.pid"]) for s in otlp_receiver.spans}
    assert len(pids) == 2, f"spans came from {pids}; both workers should serve"

    for trace_id, parent in sent.items():
        span = otlp_receiver.wait_for_span(lambda s, t=trace_id: s.trace_id_hex == t)
        assert span.parent_span_id_hex == parent and span.name == "GET /example"
        message = envelope_receiver.wait_for(
            lambda e, t=trace_id: e["contexts"]["trace"]["trace_id"] == t, item_type="event"
        )
        assert message["contexts"]["trace"]["span_id"] == span.span_id_hex
        assert span.attributes["sentry.event_id"] == message["event_id"]
        envelope_receiver.wait_for(
            lambda e, t=trace_id: e["contexts"]["trace"]["trace_id"] == t,
            item_type="transaction",
        )
