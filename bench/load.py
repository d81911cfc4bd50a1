"""The Python load generator of the benchmarks: keep-alive `http.client` processes.

`python_load(url, seconds, connections, ...)` starts `connections` processes of
`python -m bench.load` that send the same request back to back from one moment to
another (they import nothing but the standard library, so they start on time), and
merges what they measured into a `Load`.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["Load", "percentile", "python_load"]

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Load:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int


def percentile(ordered: list[float], percent: float) -> float:
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(percent / 100 * len(ordered)) - 1))
    return ordered[index]


def client(
    url: str, start_at: float, stop_at: float, method: str, body: str, expect: int
) -> tuple[list[float], int]:
    """One keep-alive connection: latencies (s) of the answers with status `expect`,
    and how many requests failed or got another status."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    headers = {"content-type": "application/json"} if body else {}
    latencies: list[float] = []
    errors = 0
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    while time.time() < start_at:
        time.sleep(0.001)
    while time.time() < stop_at:
        started = time.perf_counter()
        try:
            connection.request(method, target, body or None, headers)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            errors += 1
            connection.close()
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
            continue
        if response.status != expect:
            errors += 1
        latencies.append(time.perf_counter() - started)
    connection.close()
    return latencies, errors


def python_load(
    url: str,
    seconds: float,
    connections: int,
    method: str = "GET",
    body: str = "",
    expect: int = 200,
) -> Load:
    """`connections` client processes, in step, for `seconds`."""
    start_at = time.time() + 2.0  # interpreters need a moment to start
    stop_at = start_at + seconds
    command = [sys.executable, "-m", "bench.load", url, str(start_at), str(stop_at),
               method, body, str(expect)]  # fmt: skip
    clients = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for _ in range(connections)
    ]
    latencies: list[float] = []
    errors = 0
    for one in clients:
        out, _ = one.communicate(timeout=seconds + 60)
        some, failed = json.loads(out)
        latencies.extend(some)
        errors += failed
    latencies.sort()
    return Load(
        requests=len(latencies),
        seconds=seconds,
        p50_ms=percentile(latencies, 50) * 1000,
        p99_ms=percentile(latencies, 99) * 1000,
        errors=errors,
    )


if __name__ == "__main__":
    url, start, stop, method, body, expect = sys.argv[1:7]
    print(json.dumps(client(url, float(start), float(stop), method, body, int(expect))))
