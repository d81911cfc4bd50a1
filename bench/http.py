"""Requests per second of one trivial Flask route under gunicorn, traced seven ways.

What it measures: the throughput, latency and CPU cost that each way of tracing adds
to a Flask service, as ratios to bare Flask in the same run, and whether the telemetry
arrived. The variants (`bench.apps`): bare Flask; OpenTelemetry with OTLP export;
sentry-sdk's own tracing; sentry-sdk's OpenTelemetry bridge (SentrySpanProcessor);
sentry-sdk's OTLPIntegration; tracegate's full bridge; tracegate with Sentry's
transactions sent to Sentry's OTLP endpoint (TRACEGATE_SENTRY_TRACES=otlp; reported
"not available" where tracegate does not have that mode).

How:

- every variant is its own gunicorn (2 gthread workers x 4 threads, as `tracegate
  serve` runs, no preload: telemetry is set up in each worker after the fork) serving
  `GET /hello`, with an environment built from nothing but what that variant needs;
- each variant posts to its own local receiver (`bench.receivers.Ingest`) over real
  HTTP: Sentry envelopes, OTLP to a collector, OTLP to Sentry's endpoint, all parsed
  and counted; every variant uses `OTEL_BSP_SCHEDULE_DELAY=500` so the last partial
  batch of a round arrives within the round's settling time (under load batches go out
  when full, whatever the delay);
- load comes from a separate process on loopback: `wrk` (1 thread, 8 keep-alive
  connections) when it is on PATH, else a Python load generator (processes with one
  keep-alive `http.client` connection each); the report says which;
- after a warm-up, the variants run interleaved, A B C ... A B C, for several rounds,
  so drift of the machine falls on all of them alike. After each round the harness
  waits until the receiver has what the round sent (or nothing more arrives), then
  counts, so the cost of exporting is in the round that caused it;
- CPU per request is utime + stime of the gunicorn master and its workers
  (/proc/<pid>/stat, background export threads included) over the round and its
  settling time, divided by the requests the load generator completed;
- reported: median req/s over the rounds, median p50 and p99 latency, CPU per request,
  ratios to bare Flask, and requests sent against spans / transactions received
  (a request in flight when the load stops is served but not counted as sent, so up
  to 8 more may arrive per round than were sent).

`python -m bench.http [--quick] [--variants sentry-otel,tracegate]` prints the Markdown
report (bare Flask always runs: it is what the ratios are of); `run(quick)` returns it.
Quick: 2 rounds of 2 s per variant (about a minute in all); full: 5 rounds of 10 s.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from bench.load import Load, python_load
from bench.receivers import Counts, Ingest
from tests.peers.base import LOOPBACK, free_port

__all__ = ["run"]

ROOT = Path(__file__).resolve().parents[1]
ROUTE = "/hello"
WORKERS = 2
THREADS = 4
CONNECTIONS = 8
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Variant:
    name: str
    title: str
    # What each request should make arrive, by `Counts` field.
    expects: tuple[str, ...]
    target: str  # from issue 6: share of bare Flask's req/s measured before tracegate
    needs_dsn: bool = False
    needs_otlp: bool = False
    extra_env: tuple[tuple[str, str], ...] = ()


VARIANTS = (
    Variant("bare", "bare Flask", (), "≈ 5,400 req/s"),
    Variant("otel", "OpenTelemetry + OTLP", ("otlp_spans",), "≈ 55 %", needs_otlp=True),
    Variant("sentry", "sentry-sdk tracing", ("transactions",), "≈ 18 %", needs_dsn=True),
    Variant(
        "sentry-otel",
        "sentry-sdk OTel bridge (SentrySpanProcessor)",
        ("transactions",),
        "≈ 15 %",
        needs_dsn=True,
    ),
    Variant(
        "sentry-otlp",
        "sentry-sdk OTLPIntegration",
        ("sentry_otlp_spans",),
        "≈ 45 %",
        needs_dsn=True,
    ),
    Variant(
        "tracegate",
        "tracegate (OTLP + Sentry envelopes)",
        ("otlp_spans", "transactions"),
        "≥ 35 % and ≥ 2x sentry OTel bridge",
        needs_dsn=True,
        needs_otlp=True,
        extra_env=(("TRACEGATE_SENTRY_TRACES", "envelope"),),
    ),
    Variant(
        "tracegate-otlp",
        "tracegate (OTLP + Sentry via OTLP)",
        ("otlp_spans", "sentry_otlp_spans"),
        "≥ 50 %",
        needs_dsn=True,
        needs_otlp=True,
        extra_env=(("TRACEGATE_SENTRY_TRACES", "otlp"),),
    ),
)

_LABELS = {
    "otlp_spans": "OTLP spans",
    "transactions": "transactions",
    "sentry_otlp_spans": "Sentry OTLP spans",
    "transaction_spans": "child spans",
    "events": "error events",
    "rejected": "refused",
}


def _log(message: str) -> None:
    print(f"[bench.http] {message}", file=sys.stderr, flush=True)


# -- load ----------------------------------------------------------------------


_WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH %d %d %d %d %d\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


class Loader:
    """Runs load against a URL from a separate process: wrk, else Python."""

    def __init__(self, scratch: Path) -> None:
        self.wrk = shutil.which("wrk")
        self.script = scratch / "report.lua"
        self.script.write_text(_WRK_SCRIPT)

    @property
    def description(self) -> str:
        if self.wrk:
            return f"wrk ({_wrk_version(self.wrk)}), 1 thread, {CONNECTIONS} connections"
        return (
            f"Python load generator ({CONNECTIONS} processes, one keep-alive "
            "http.client connection each; wrk was not on PATH)"
        )

    def run(self, url: str, seconds: float) -> Load:
        if self.wrk:
            return self._wrk(url, seconds)
        return python_load(url, seconds, CONNECTIONS)

    def _wrk(self, url: str, seconds: float) -> Load:
        assert self.wrk is not None
        args = [self.wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", "--timeout", "5s"]
        done = subprocess.run(
            [*args, "-s", str(self.script), url],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=True,
        )
        line = next(x for x in done.stdout.splitlines() if x.startswith("BENCH "))
        requests, duration_us, p50_us, p99_us, errors = (int(x) for x in line.split()[1:])
        return Load(requests, duration_us / 1e6, p50_us / 1000, p99_us / 1000, errors)


def _wrk_version(path: str) -> str:
    done = subprocess.run([path, "-v"], capture_output=True, text=True, timeout=10)
    words = (done.stdout or done.stderr).split()
    return " ".join(words[:2]) if words else "wrk"


# -- servers -------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """utime + stime of one process, all its threads (0 once it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return found


@dataclass
class Server:
    """One variant's gunicorn and its receiver."""

    variant: Variant
    ingest: Ingest
    scratch: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    unavailable: str = ""
    rounds: list[Round] = field(default_factory=list)
    warm: Counts = field(default_factory=Counts)
    # What sentry-sdk's client reports said it dropped over the server's life.
    sdk_drops: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}{ROUTE}"

    @property
    def log(self) -> Path:
        return self.scratch / f"{self.variant.name}.log"

    def environment(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", "/tmp"),
            "PYTHONPATH": str(ROOT),
            "PYTHONDONTWRITEBYTECODE": "1",
            "OTEL_SERVICE_NAME": f"bench-{self.variant.name}",
            "OTEL_BSP_SCHEDULE_DELAY": "500",
            "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        }
        if self.variant.needs_dsn:
            env["SENTRY_DSN"] = self.ingest.dsn
            env["SENTRY_ENVIRONMENT"] = "bench"
        if self.variant.needs_otlp:
            env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.ingest.endpoint
        if self.variant.name.startswith("tracegate"):
            env["TRACEGATE_STORE"] = "0"  # no local trace store: only the real sinks
        env.update(dict(self.variant.extra_env))
        return env

    def start(self) -> None:
        self.port = free_port()
        args = [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"{LOOPBACK}:{self.port}",
            "--workers",
            str(WORKERS),
            "--worker-class",
            "gthread",
            "--threads",
            str(THREADS),
            "--log-level",
            "warning",
            "--graceful-timeout",
            "5",
            *(["--no-control-socket"] if _has_control_socket() else []),
            f"bench.apps:create_app({self.variant.name!r})",
        ]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                args, cwd=ROOT, env=self.environment(), stdout=log, stderr=subprocess.STDOUT
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until every worker has answered (each sets up its telemetry when it boots)."""
        assert self.process is not None
        pids: set[int] = set()
        deadline = time.monotonic() + timeout
        while len(pids) < WORKERS:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self._log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn not ready in {timeout:g}s: {self._log_tail()}")
            try:
                connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=5)
                connection.request("GET", ROUTE)
                response = connection.getresponse()
                body = response.read()
                connection.close()
                if response.status == 200:
                    pids.add(int(json.loads(body)["pid"]))
                    continue
            except (OSError, http.client.HTTPException, ValueError, KeyError):
                pass
            time.sleep(0.1)

    def pids(self) -> list[int]:
        assert self.process is not None
        return [self.process.pid, *_children(self.process.pid)]

    def cpu(self) -> float:
        return sum(_cpu_seconds(pid) for pid in self.pids())

    def terminate(self) -> None:
        """Ask gunicorn to stop; its workers finish and flush as they exit."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        self.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def _log_tail(self) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(lines[-3:]) or "(empty log)"


def _has_control_socket() -> bool:
    # gunicorn >= 27 opens a control socket under ~/.gunicorn unless told not to.
    from gunicorn.config import Config

    return "control_socket_disable" in Config().settings


# -- rounds --------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    load: Load
    cpu_s: float
    received: Counts
    # Times it was run again because one worker got every connection.
    retries: int = 0

    @property
    def rps(self) -> float:
        return self.load.requests / self.load.seconds if self.load.seconds else 0.0


def _settle(server: Server, before: Counts, sent: int, timeout: float = 5.0) -> Counts:
    """Wait until what `sent` requests should make has arrived, or nothing more does."""
    expects = server.variant.expects
    deadline = time.monotonic() + timeout
    last = server.ingest.counts()
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        now = server.ingest.counts()
        got = now.minus(before)
        if all(getattr(got, name) >= sent for name in expects):
            return got
        if now != last:
            last, quiet_since = now, time.monotonic()
        elif time.monotonic() - quiet_since > 1.0:  # the batch delay is 0.5 s
            return got
        time.sleep(0.05)
    return server.ingest.counts().minus(before)


def _stop_and_collect(servers: list[Server], timeout: float = 5.0) -> None:
    """Stop every server gracefully; sentry-sdk sends its client reports as it exits."""
    for server in servers:
        server.terminate()
    for server in servers:
        server.stop()
    deadline = time.monotonic() + timeout
    last = [s.ingest.counts() for s in servers]
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = [s.ingest.counts() for s in servers]
        if now == last:
            break
        last = now
    for server in servers:
        server.sdk_drops = server.ingest.sdk_drops()


# A round whose connections all went to one gunicorn worker measures one process, not
# two: wrk opens its connections at once and the first worker awake often accepts
# every one of them (half the round's req/s for a CPU-bound variant). Such a round is
# run again, up to this many times.
LOPSIDED_RETRIES = 4
LOPSIDED_SHARE = 0.25  # the idler worker's share of the workers' CPU below which


def _round(server: Server, loader: Loader, seconds: float) -> Round:
    for attempt in range(LOPSIDED_RETRIES + 1):
        before = server.ingest.counts()
        pids = server.pids()
        cpu_before = {pid: _cpu_seconds(pid) for pid in pids}
        load = loader.run(server.url, seconds)
        received = _settle(server, before, load.requests)
        used = {pid: _cpu_seconds(pid) - cpu_before[pid] for pid in pids}
        if set(server.pids()) != set(pids):  # a worker died: its CPU time went with it
            _log(f"{server.variant.name}: gunicorn replaced a worker; this round's CPU is low")
        workers = [used[pid] for pid in pids[1:]]
        total = float(sum(workers))
        share = min(workers) / total if len(workers) > 1 and total > 0 else 0.5
        if share >= LOPSIDED_SHARE or attempt == LOPSIDED_RETRIES:
            return Round(load, sum(used.values()), received, attempt)
        _log(
            f"{server.variant.name}: one worker had {1 - share:.0%} of the CPU "
            f"({load.requests / load.seconds:,.0f} req/s); running the round again"
        )
    raise AssertionError("unreachable")


def _warm(server: Server, loader: Loader, seconds: float) -> None:
    before = server.ingest.counts()
    load = loader.run(server.url, seconds)
    server.warm = _settle(server, before, load.requests)
    variant = server.variant
    if variant.name == "tracegate-otlp" and server.warm.sentry_otlp_spans == 0:
        server.unavailable = (
            "TRACEGATE_SENTRY_TRACES=otlp is not available: nothing arrived at Sentry's "
            f"OTLP endpoint ({_describe(server.warm)} did)"
        )


# -- report --------------------------------------------------------------------


def _describe(counts: Counts, sent: int | None = None, expects: tuple[str, ...] = ()) -> str:
    parts = []
    for name, label in _LABELS.items():
        value = getattr(counts, name)
        if not value and name not in expects:
            continue
        text = f"{value:,} {label}"
        if sent and name in expects and value < sent:
            text += f" (**{(sent - value) / sent:.1%} missing**)"
        parts.append(text)
    return ", ".join(parts) or "nothing"


def _total(rounds: list[Round]) -> Counts:
    total = Counts()
    for one in rounds:
        total = total.plus(one.received)
    return total


def _report(
    servers: list[Server],
    loader: Loader,
    quick: bool,
    rounds: int,
    seconds: float,
    names: tuple[str, ...] = (),
) -> list[str]:
    bare = next(s for s in servers if s.variant.name == "bare")
    bare_rps = statistics.median(r.rps for r in bare.rounds)
    bare_cpu = _cpu_per_request(bare.rounds)
    rps_of: dict[str, float] = {}
    lines = [
        f"HTTP: one JSON route under gunicorn, {rounds} interleaved rounds of {seconds:g} s "
        f"per variant ({'quick' if quick else 'full'} mode)",
        "",
        "| variant | req/s | x bare | p50 ms | p99 ms | CPU µs/req | CPU x bare "
        "| sent | received | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for server in servers:
        variant = server.variant
        if server.unavailable:
            lines.append(
                f"| {variant.title} | not available | | | | | | | {server.unavailable} "
                f"| {variant.target} |"
            )
            continue
        rounds_done = server.rounds
        rps = statistics.median(r.rps for r in rounds_done)
        rps_of[variant.name] = rps
        cpu = _cpu_per_request(rounds_done)
        sent = sum(r.load.requests for r in rounds_done)
        errors = sum(r.load.errors for r in rounds_done)
        received = _describe(_total(rounds_done), sent, variant.expects)
        if errors:
            received += f"; **{errors:,} failed requests**"
        lines.append(
            f"| {variant.title} | {rps:,.0f} | {rps / bare_rps:.0%} "
            f"| {statistics.median(r.load.p50_ms for r in rounds_done):.2f} "
            f"| {statistics.median(r.load.p99_ms for r in rounds_done):.2f} "
            f"| {cpu * 1e6:,.0f} | {cpu / bare_cpu:.2f} | {sent:,} | {received} "
            f"| {variant.target} |"
        )
    lines.append("")
    if "tracegate" in rps_of and "sentry-otel" in rps_of:
        lines.append(
            f"tracegate's full bridge: {rps_of['tracegate'] / rps_of['sentry-otel']:.2f}x "
            f"sentry-sdk's OTel bridge (target ≥ 2x), {rps_of['tracegate'] / bare_rps:.0%} "
            "of bare Flask (target ≥ 35 %)."
        )
    if "tracegate-otlp" in rps_of:
        lines.append(
            f"tracegate with Sentry via OTLP: {rps_of['tracegate-otlp'] / bare_rps:.0%} of "
            "bare Flask (target ≥ 50 %)."
        )
    drops = [
        f"{server.variant.title}: "
        + ", ".join(f"{count:,} ({reason})" for reason, count in sorted(server.sdk_drops.items()))
        for server in servers
        if server.sdk_drops and not server.unavailable
    ]
    if drops:
        lines.append(
            "Transactions dropped before sending, as sentry-sdk's own client reports say "
            "(whole run, warm-up included): " + "; ".join(drops) + "."
        )
    lines += [
        "",
        f"Load: {loader.description}, from a separate process on loopback. gunicorn "
        f"{_version('gunicorn')}: {WORKERS} gthread workers x {THREADS} threads, no preload. "
        "Each variant posts to its own local receiver (Sentry envelopes, OTLP/HTTP "
        "protobuf, Sentry's OTLP endpoint) over HTTP/1.1; received = what the receiver "
        "parsed. CPU = utime+stime of the gunicorn master and workers / requests sent. "
        "A round in which one worker got every connection (under "
        f"{LOPSIDED_SHARE:.0%} of the workers' CPU for the other) was run again: "
        f"{sum(r.retries for s in servers for r in s.rounds)} time(s) in this run.",
        f"Command: `python -m bench.http{' --quick' if quick else ''}"
        f"{' --variants ' + ','.join(names) if names else ''}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, Flask {_version('flask')}, "
        f"sentry-sdk {_version('sentry-sdk')}, opentelemetry-sdk "
        f"{_version('opentelemetry-sdk')}, opentelemetry-instrumentation-flask "
        f"{_version('opentelemetry-instrumentation-flask')}.",
    ]
    return lines


def _cpu_per_request(rounds: list[Round]) -> float:
    requests = sum(r.load.requests for r in rounds)
    return sum(r.cpu_s for r in rounds) / requests if requests else 0.0


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "?"


# -- the run -------------------------------------------------------------------


@contextlib.contextmanager
def _servers(scratch: Path, names: tuple[str, ...]) -> Iterator[list[Server]]:
    chosen = [v for v in VARIANTS if v.name == "bare" or not names or v.name in names]
    servers = [Server(variant, Ingest(), scratch) for variant in chosen]
    try:
        for server in servers:
            server.ingest.start()
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()
            server.ingest.stop()


def run(quick: bool, names: tuple[str, ...] = ()) -> list[str]:
    """Benchmark every variant (or bare Flask and `names`); the Markdown report,
    progress on stderr."""
    rounds, seconds, warmup = (2, 2.0, 1.0) if quick else (5, 10.0, 3.0)
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        scratch = Path(tmp)
        loader = Loader(scratch)
        _log(f"load: {loader.description}")
        with _servers(scratch, names) as servers:
            for server in servers:
                try:
                    server.wait_ready()
                except RuntimeError as error:
                    if server.variant.name != "tracegate-otlp":
                        raise RuntimeError(f"{server.variant.name}: {error}") from error
                    server.unavailable = f"gunicorn did not start: {error}"
                    server.stop()
            for server in servers:
                if not server.unavailable:
                    _warm(server, loader, warmup)
                    _log(f"warm {server.variant.name}: received {_describe(server.warm)}")
            for number in range(1, rounds + 1):
                for server in servers:
                    if server.unavailable:
                        continue
                    result = _round(server, loader, seconds)
                    server.rounds.append(result)
                    _log(
                        f"round {number}/{rounds} {server.variant.name}: "
                        f"{result.rps:,.0f} req/s, p99 {result.load.p99_ms:.1f} ms, "
                        f"{result.cpu_s / max(1, result.load.requests) * 1e6:,.0f} µs CPU/req, "
                        f"sent {result.load.requests:,}, received {_describe(result.received)}"
                    )
            _stop_and_collect(servers)
        return _report(servers, loader, quick, rounds, seconds, names)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.http")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 2 s per variant")
    parser.add_argument(
        "--variants",
        type=lambda text: tuple(v for v in text.split(",") if v),
        default=(),
        help="a comma-separated subset, e.g. sentry-otel,tracegate (bare Flask always runs)",
    )
    args = parser.parse_args()
    unknown = set(args.variants) - {v.name for v in VARIANTS}
    if unknown:
        parser.error(f"unknown variants: {', '.join(sorted(unknown))}")
    print("\n".join(run(args.quick, args.variants)))


if __name__ == "__main__":
    main()
