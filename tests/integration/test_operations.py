"""Operational edges: readiness against a real Redis (also behind a unix socket), and
flushes that keep their deadline when the collector or Sentry does not answer."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import redis
import sentry_sdk
from werkzeug.serving import make_server

from gateway.doctor import FAIL, OK, _sentry_tracing_check, config_checks
from gateway.settings import Settings
from tests.harness import gateways
from tests.peers.envelope import EnvelopeReceiver
from tests.peers.otlp import OTLPReceiver
from tests.peers.redis import RedisServer


def test_readyz_reports_redis(redis_url: str, free_port: int) -> None:
    with gateways({"REDIS_URL": redis_url}) as make:
        ready = make().client.get("/readyz")
    assert ready.status_code == 200 and ready.json == {
        "status": "ready",
        "checks": {"sentry_tracing": "off", "redis": "ok"},
    }
    with gateways({"REDIS_URL": f"redis://127.0.0.1:{free_port}/0"}) as make:
        down = make().client.get("/readyz")
    assert down.status_code == 503 and down.json is not None
    assert down.json["error"]["code"] == "not_ready"


def test_doctor_sees_sentrys_own_tracing_switched_on_in_the_gateway(
    envelope_receiver: EnvelopeReceiver,
) -> None:
    with gateways({"SENTRY_DSN": envelope_receiver.dsn}) as make:
        gateway = make()
        server = make_server("127.0.0.1", 0, gateway.app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_port}"
        try:
            assert _sentry_tracing_check(url).status == "ok"
            # What a service's own `sentry_sdk.init(traces_sample_rate=...)` would do.
            sentry_sdk.get_client().options["traces_sample_rate"] = 1.0
            check = _sentry_tracing_check(url)
            assert check.status == "FAIL" and "traces_sample_rate" in check.fix
        finally:
            server.shutdown()
            server.server_close()


def test_flush_keeps_its_deadline_when_peers_never_answer(silent_server: str) -> None:
    dsn = silent_server.replace("http://", "http://public@") + "/1"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": silent_server, "SENTRY_DSN": dsn}
    with gateways(env) as make:
        gateway = make()
        for _ in range(5):
            assert gateway.client.get("/example/error").status_code == 500
        started = time.monotonic()
        finished = gateway.telemetry.flush(0.5)
        elapsed = time.monotonic() - started
        # The exporter would wait its 10 s timeout; the flush gives up at the deadline.
        assert not finished
        assert elapsed < 2.0, f"flush took {elapsed:.2f}s with a 0.5s deadline"


def test_a_unix_socket_redis_url_carries_jobs(tmp_path: Path) -> None:
    socket_path = tmp_path / "redis.sock"
    server = RedisServer(extra_args=["--unixsocket", str(socket_path), "--unixsocketperm", "700"])
    with server, gateways({"REDIS_URL": f"unix://{socket_path}?db=0"}) as make:
        client = make(TRACEGATE_DEMO_TASKS="1").client
        assert client.get("/readyz").status_code == 200
        created = client.post("/v1/jobs", json={"task": "echo"})
        assert created.status_code == 202 and created.json is not None
        # The job is in the server behind the socket.
        with redis.Redis(unix_socket_path=str(socket_path)) as direct:
            assert direct.exists(f"rq:job:{created.json['job_id']}")


def test_a_rediss_url_carries_jobs_over_tls_to_the_worker(
    tmp_path: Path, otlp_receiver: OTLPReceiver
) -> None:
    from tests.harness import output_within, start_worker, tls_files
    from tests.peers.base import free_port

    ca, cert, key = tls_files(tmp_path)
    tls_port = free_port()
    server = RedisServer(
        extra_args=["--tls-port", str(tls_port), "--tls-cert-file", str(cert),
                    "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
                    "--tls-auth-clients", "no"]
    )  # fmt: skip
    tls_url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}&ssl_cert_reqs=required"
    env = {"REDIS_URL": tls_url, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint}
    with server, gateways(env) as make:
        gateway = make(TRACEGATE_DEMO_TASKS="1")
        assert gateway.client.get("/readyz").status_code == 200
        created = gateway.client.post("/v1/jobs", json={"task": "echo", "args": ["tls"]})
        assert created.status_code == 202 and created.json is not None
        job_id = created.json["job_id"]
        gateway.flush()
        # Plain Redis on the TLS port gets no answer it can read: a clear 503, not a crash.
        plain = make(TRACEGATE_DEMO_TASKS="1", REDIS_URL=f"redis://127.0.0.1:{tls_port}/0")
        assert plain.client.get("/readyz").status_code == 503
        import os

        worker_env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
            "REDIS_URL": tls_url,
            "TRACEGATE_DEMO_TASKS": "1",
            "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
            "TRACEGATE_STORE": "0",
        }
        output = output_within(start_worker(worker_env, "--burst"), 60, "the TLS worker")
        status = gateway.client.get(created.json["status_url"]).get_json()
        assert status["status"] == "finished", output
        consumer = otlp_receiver.wait_for_span(
            lambda s: (
                s.kind_name == "CONSUMER" and s.attributes.get("messaging.message.id") == job_id
            )
        )
        assert consumer.trace_id_hex == created.json["trace_id"]


def test_doctor_checks_the_replicas_the_settings_wait_for(
    replicated_redis: tuple[RedisServer, RedisServer], redis_url: str
) -> None:
    def redis_row(url: str) -> tuple[str, str]:
        env = {"REDIS_URL": url, "TRACEGATE_REDIS_WAIT_REPLICAS": "1"}
        (row,) = [c for c in config_checks(Settings.from_env(env)) if c.name == "Redis"]
        return row.status, row.detail

    primary, _ = replicated_redis
    awaited = f"127.0.0.1:{primary.port}, 1 replica(s) connected, 1 awaited"
    assert redis_row(primary.url) == (OK, awaited)
    # A Redis without replicas: every 202 would be a 503, every work horse would wait.
    status, detail = redis_row(redis_url)
    assert status == FAIL and "the primary has 0 replica(s)" in detail
