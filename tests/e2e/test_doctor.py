"""`tracegate doctor` names the broken link when a worker runs without the traced classes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )


def _answered(url: str, wait_s: float = 30) -> None:
    """Wait until `url` answers (the server has started)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)


@pytest.fixture
def untraced_deployment(
    redis_url: str, free_port: int, tmp_path: Path
) -> Iterator[tuple[str, dict[str, str]]]:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "REDIS_URL": redis_url,
        "TRACEGATE_DEMO_TASKS": "1",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    gateway = _start(
        [str(BIN / "tracegate"), "serve", "--port", str(free_port), "--workers", "1"], env
    )
    # rq's own worker with rq's own classes: jobs run, but nobody continues their trace.
    worker = _start([str(BIN / "rq"), "worker", "--url", redis_url, "default"], env)
    base = f"http://127.0.0.1:{free_port}"
    _answered(base + "/healthz")
    try:
        yield base, env
    finally:
        for process in (gateway, worker):
            os.killpg(process.pid, signal.SIGTERM)
        gateway.wait(timeout=30)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            # rq's own worker, not under test here: its SIGTERM handler raises wherever
            # the idle worker is, and an `except` of rq's can swallow the stop.
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()


def test_doctor_diagnoses_a_worker_without_the_traced_classes(
    untraced_deployment: tuple[str, dict[str, str]],
) -> None:
    base, env = untraced_deployment
    time.sleep(1)  # the worker registers itself
    result = subprocess.run(
        [str(BIN / "tracegate"), "doctor", "--url", base, "--json", "--timeout", "4"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    rows = {row["name"]: row for row in report["configuration"] + report["probe"]}
    assert not report["ok"]
    assert rows["RQ workers"]["status"] == "FAIL" and "not traced" in rows["RQ workers"]["detail"]
    assert rows["Job spans"]["status"] == "FAIL"
    assert "otel.rq.TracedWorker" in rows["Job spans"]["fix"]
    assert rows["Trace id at the edge"]["status"] == "ok"  # the rest of the trace is whole
    assert rows["Server span"]["status"] == "ok"
    text = subprocess.run(
        [str(BIN / "tracegate"), "doctor", "--url", base, "--timeout", "4"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert "context not carried" in text
    assert all(len(line) <= 80 for line in text.splitlines())


def test_doctor_shows_what_a_dead_collector_lost(
    redis_url: str, free_port: int, tmp_path: Path
) -> None:
    from tests.peers import free_port as another_port

    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "REDIS_URL": redis_url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        # Nothing listens there; each export gives up after 0.2 s.
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{another_port()}",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "200",
    }
    gateway = _start(
        [str(BIN / "tracegate"), "serve", "--port", str(free_port), "--workers", "1"], env
    )
    base = f"http://127.0.0.1:{free_port}"
    try:
        _answered(base + "/example")
        time.sleep(1.0)  # the first spans' export fails
        result = subprocess.run(
            [str(BIN / "tracegate"), "doctor", "--url", base, "--json", "--timeout", "2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        report = json.loads(result.stdout)
        rows = {row["name"]: row for row in report["configuration"] + report["probe"]}
        assert rows["Losses"]["status"] == "warn", rows["Losses"]
        assert "spans dropped" in rows["Losses"]["detail"]
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" in rows["Losses"]["fix"]
        assert rows["OTLP export"]["status"] == "FAIL"  # its own probe span, refused too
        assert result.returncode == 1
    finally:
        os.killpg(gateway.pid, signal.SIGTERM)
        gateway.wait(timeout=30)


@pytest.mark.parametrize(
    ("env", "args", "status", "expected"),
    [
        ({"SENTRY_DSN": "not-a-dsn"}, [], 2, "SENTRY_DSN"),
        ({}, ["--url", "localhost:1"], 1, "is not an http(s):// URL"),
    ],
)
def test_doctor_json_is_json_whatever_goes_wrong(
    env: dict[str, str], args: list[str], status: int, expected: str, tmp_path: Path
) -> None:
    result = subprocess.run(
        [str(BIN / "tracegate"), "doctor", "--json", "--timeout", "1", *args],
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == status, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False
    rows = report["configuration"] + report["probe"]
    assert any(expected in row["detail"] for row in rows if row["status"] == "FAIL"), rows
