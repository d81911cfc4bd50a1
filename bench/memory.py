"""Memory of a gateway process under load: its RSS must stay flat, whatever its backends do.

What is measured: the real gateway (`tracegate serve --workers 1`, gunicorn's gthread
worker, with `SENTRY_DSN`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `TRACEGATE_DEMO_ROUTES=1`,
`TRACEGATE_STORE=0` and no `REDIS_URL`) serves `requests` requests (100,000; 5,000
with `--quick`) from a keep-alive `http.client` load generator in this process (a few
threads), alternating two traced routes:

- `GET /example`, which captures a Sentry message inside the request's trace;
- `GET /v1/jobs/<id>`: a server span and an error response (`503 queue_unavailable`,
  there is no Redis), so a Sentry transaction and no Sentry event.

The gunicorn worker's `VmRSS` and `VmHWM` (peak) are read from `/proc/<pid>/status`
before the first request and after every tenth of them. Scenarios:

- **healthy**  Sentry and the collector are live local receivers (they count what
  arrived);
- **closed**   both point at a closed port (connection refused);
- **hanging**  both point at a server that accepts connections and never answers.

The gateway's own `/metrics` says what it gave up. With dead backends its bounded
queues fill first (2,048 spans waiting for OTLP plus a batch of 512 in flight, 100
envelopes for Sentry), which takes a few thousand requests; after that, whatever
grows with the number of requests is a leak. So the verdict is on the last 40 % of
the requests (from 3,000 on with `--quick`): flat means growth under 2 MiB there.

    python -m bench.memory [--quick]
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["run"]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ROUTES = ("/example", "/v1/jobs/0123456789abcdef")
SCENARIOS = ("healthy", "closed", "hanging")
CLIENTS = 4  # load generator threads, one keep-alive connection each
TENTHS = 10
SETTLED = 6  # the verdict is on the growth from this tenth of the requests to the end
FLAT_MIB = 2.0


class _BlackHole:
    """A TCP server that accepts every connection and never reads or answers."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._held: list[socket.socket] = []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="black-hole", daemon=True)

    @property
    def port(self) -> int:
        port: int = self._listener.getsockname()[1]
        return port

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stopped.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._held.append(conn)

    def __enter__(self) -> _BlackHole:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopped.set()
        self._thread.join(timeout=2)
        for conn in self._held:
            conn.close()
        self._listener.close()


def _closed_port() -> int:
    """A port nothing listens on (it was free a moment ago)."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _backends(scenario: str) -> Iterator[tuple[dict[str, str], Any, Any]]:
    """The environment pointing the gateway at the scenario's backends, and the
    receivers (None unless healthy)."""
    if scenario == "healthy":
        from bench.receivers import keep_alive
        from tests.peers.envelope import EnvelopeReceiver
        from tests.peers.otlp import OTLPReceiver

        with OTLPReceiver() as otlp, EnvelopeReceiver() as sentry:
            keep_alive(otlp)
            keep_alive(sentry)
            live = {"SENTRY_DSN": sentry.dsn, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint}
            yield live, otlp, sentry
        return
    if scenario == "closed":
        port = _closed_port()
        yield _dead_env(port), None, None
        return
    with _BlackHole() as hole:
        yield _dead_env(hole.port), None, None


def _dead_env(port: int) -> dict[str, str]:
    return {
        "SENTRY_DSN": f"http://public@127.0.0.1:{port}/42",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
    }


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def _memory_kib(pid: int) -> tuple[int, int]:
    """VmRSS and VmHWM of a process, in KiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    values = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.MULTILINE))
    return int(values["VmRSS"]), int(values["VmHWM"])


class _Gateway:
    """`tracegate serve --workers 1` on a free port, stopped with SIGTERM."""

    def __init__(self, backends: dict[str, str], log: Any) -> None:
        self.port = _closed_port()
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/tmp"),
            "TRACEGATE_DEMO_ROUTES": "1",
            "TRACEGATE_STORE": "0",
            "OTEL_SERVICE_NAME": "bench-memory",
            **backends,
        }
        self.process = subprocess.Popen(
            [str(BIN / "tracegate"), "serve", "--workers", "1", "--port", str(self.port)],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
        )
        self.worker = 0

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.process.returncode}")
            workers = _children(self.process.pid)
            if workers:
                try:
                    connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                    connection.request("GET", "/healthz")
                    if connection.getresponse().status == 200:
                        self.worker = workers[0]
                        return
                except OSError:
                    pass
            time.sleep(0.1)
        raise RuntimeError("the gateway did not answer /healthz")

    def get(self, path: str) -> str:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        connection.request("GET", path)
        return connection.getresponse().read().decode()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)


def _load(port: int, count: int, statuses: dict[int, int]) -> None:
    """`count` requests over CLIENTS keep-alive connections, the routes alternating."""
    lock = threading.Lock()
    per_client = [count // CLIENTS + (1 if i < count % CLIENTS else 0) for i in range(CLIENTS)]

    def client(n: int, offset: int) -> None:
        connection: http.client.HTTPConnection | None = None
        seen: dict[int, int] = {}
        for i in range(n):
            for _attempt in range(3):  # the server may close an idle keep-alive connection
                try:
                    if connection is None:
                        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                    connection.request("GET", ROUTES[(offset + i) % len(ROUTES)])
                    response = connection.getresponse()
                    response.read()
                    seen[response.status] = seen.get(response.status, 0) + 1
                    if response.getheader("connection", "").lower() == "close":
                        connection.close()
                        connection = None
                    break
                except (OSError, http.client.HTTPException):
                    if connection is not None:
                        connection.close()
                    connection = None
            else:
                seen[0] = seen.get(0, 0) + 1  # no answer after three tries
        if connection is not None:
            connection.close()
        with lock:
            for status, times in seen.items():
                statuses[status] = statuses.get(status, 0) + times

    threads = [threading.Thread(target=client, args=(n, i)) for i, n in enumerate(per_client)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _dropped(metrics: str) -> dict[str, int]:
    """What the gateway's counters say it gave up, summed per counter and reason."""
    totals: dict[str, int] = {}
    for line in metrics.splitlines():
        match = re.match(r"tracegate_(\w+)_total\{([^}]*)\} (\d+)", line)
        if not match or not match.group(1).endswith(("dropped", "missed")):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
        what = labels.get("reason") or labels.get("what") or ""
        where = labels.get("exporter")
        key = f"{match.group(1)}{'/' + where if where else ''}:{what}"
        totals[key] = totals.get(key, 0) + int(match.group(3))
    return totals


def _scenario(scenario: str, requests: int) -> dict[str, Any]:
    with (
        _backends(scenario) as (backends, otlp, sentry),
        tempfile.TemporaryFile() as log,
    ):
        gateway = _Gateway(backends, log)
        try:
            gateway.wait_ready()
            worker = gateway.worker
            samples = [_memory_kib(worker)]
            statuses: dict[int, int] = {}
            began = time.monotonic()
            step = requests // TENTHS
            for tenth in range(TENTHS):
                count = step if tenth < TENTHS - 1 else requests - step * (TENTHS - 1)
                _load(gateway.port, count, statuses)
                samples.append(_memory_kib(worker))
            elapsed = time.monotonic() - began
            if _children(gateway.process.pid) != [worker]:
                raise RuntimeError(f"{scenario}: the gunicorn worker was replaced under load")
            dropped = _dropped(gateway.get("/metrics"))
        except Exception:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-3000:])
            raise
        finally:
            gateway.stop()
        received = {}
        if otlp is not None and sentry is not None:
            time.sleep(1.0)  # the worker flushed on exit; the last requests may be in flight
            received = {
                "spans": len(otlp.spans),
                "transactions": len(sentry.transactions()),
                "events": len(sentry.events()),
            }
    return {
        "samples": samples,
        "statuses": statuses,
        "per_s": requests / elapsed,
        "dropped": dropped,
        "received": received,
    }


def _mib(kib: int) -> str:
    return f"{kib / 1024:.1f}"


def _versions() -> str:
    import platform
    from importlib.metadata import version

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    names = ("gunicorn", "Flask", "sentry-sdk", "opentelemetry-sdk")
    parts = [f"Python {platform.python_version()}", *(f"{n} {version(n)}" for n in names)]
    return ", ".join([*parts, f"tracegate {commit or '?'}"])


def run(quick: bool, requests: int | None = None) -> list[str]:
    """Each scenario in turn; Markdown lines of the results. `requests` overrides the
    mode's number of requests per scenario."""
    from datetime import datetime, timezone

    requests = requests or (5_000 if quick else 100_000)
    results: dict[str, dict[str, Any]] = {}
    for scenario in SCENARIOS:
        started = time.monotonic()
        results[scenario] = result = _scenario(scenario, requests)
        rss = [s[0] for s in result["samples"]]
        print(
            f"memory: {scenario:<8} {result['per_s']:.0f} req/s, RSS MiB "
            + " ".join(_mib(v) for v in rss)
            + f" ({time.monotonic() - started:.0f}s)",
            file=sys.stderr,
        )
    command = "python -m bench.memory" + (" --quick" if quick else "")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "## Memory: gateway worker RSS under load",
        "",
        f"`{command}`: `tracegate serve --workers 1` (gthread, 4 threads), {requests:,} "
        f"requests from {CLIENTS} keep-alive clients, `/example` and `/v1/jobs/<id>` "
        f"alternating; {stamp}; {os.cpu_count()} CPUs; {_versions()}.",
        "",
        "RSS of the gunicorn worker in MiB (start: before the first request; peak: "
        f"VmHWM). Flat: it grows less than {FLAT_MIB:g} MiB from {SETTLED * 10} % of the "
        "requests to the end, once the bounded queues are full:",
        "",
        f"| backends | req/s | start | 10 % | 50 % | 100 % | peak | growth {SETTLED * 10}"
        "-100 % | flat |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for scenario, result in results.items():
        samples = result["samples"]
        rss = [s[0] for s in samples]
        growth = (rss[-1] - rss[SETTLED]) / 1024
        flat = "yes" if growth < FLAT_MIB else "NO"
        lines.append(
            f"| {scenario} | {result['per_s']:,.0f} | {_mib(rss[0])} | {_mib(rss[1])} "
            f"| {_mib(rss[TENTHS // 2])} | {_mib(rss[-1])} | {_mib(samples[-1][1])} "
            f"| {growth:+.1f} | {flat} |"
        )
    lines += [
        "",
        "RSS after every tenth of the requests (MiB):",
        "",
        "| backends | " + " | ".join(f"{10 * (i + 1)} %" for i in range(TENTHS)) + " |",
        "|---|" + "---:|" * TENTHS,
    ]
    for scenario, result in results.items():
        rss = [s[0] for s in result["samples"]][1:]
        lines.append(f"| {scenario} | " + " | ".join(_mib(v) for v in rss) + " |")
    lines += [
        "",
        "Responses, what the receivers got, and what the gateway's `/metrics` says it gave up:",
        "",
        "| backends | responses | received | dropped (from /metrics) |",
        "|---|---|---|---|",
    ]
    for scenario, result in results.items():
        statuses = ", ".join(f"{k or 'none'}: {v:,}" for k, v in sorted(result["statuses"].items()))
        got = result["received"]
        received = (
            f"{got['spans']:,} spans, {got['transactions']:,} transactions, "
            f"{got['events']:,} events"
            if got
            else "-"
        )
        dropped = ", ".join(f"{k} {v:,}" for k, v in sorted(result["dropped"].items())) or "none"
        lines.append(f"| {scenario} | {statuses} | {received} | {dropped} |")
    return lines


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.memory")
    parser.add_argument("--quick", action="store_true", help="5,000 requests per scenario")
    args = parser.parse_args()
    print("\n".join(run(args.quick)))


if __name__ == "__main__":
    main()
