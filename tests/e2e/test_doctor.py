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
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    try:
        yield base, env
    finally:
        for process in (gateway, worker):
            os.killpg(process.pid, signal.SIGTERM)
        for process in (gateway, worker):
            process.wait(timeout=30)


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
