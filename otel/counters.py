"""Counters of what telemetry lost or refused, so that losing it is never silent.

One `Counters` per process (built by `otel.setup()`, kept on `Telemetry.counters`).
The parts that can lose data count into it:

- `spans_dropped` — a batch processor's queue was full (`reason="queue_full"`) or an
  export failed for good (`reason="export_failed"`), per exporter (`otlp`, `store`);
- `events_dropped` — sentry-sdk's transport gave up on an error or transaction (its
  queue overflowed, Sentry was unreachable, rate limited or answered 5xx);
- `flush_deadline_missed` — a flush (a work horse's, a shutdown's) hit its deadline;
- `inbound_headers_invalid` — a request or job carried a trace header that was
  present but invalid, per header name.

`render_prometheus` writes any number of processes' snapshots in Prometheus' text
format; telemetry code only counts, it never blocks on exposition.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping

__all__ = ["COUNTERS", "Counters", "Sample", "render_prometheus"]

# name -> help text. Exposed as tracegate_<name>_total.
COUNTERS: Mapping[str, str] = {
    "spans_dropped": "Finished spans that never reached an exporter's destination.",
    "events_dropped": "Sentry events (errors, transactions) the transport gave up on.",
    "flush_deadline_missed": "Flushes of spans or Sentry events that hit their deadline.",
    "inbound_headers_invalid": "Inbound trace headers that were present but invalid.",
}

# (counter name, sorted label pairs) -> value
Sample = tuple[str, tuple[tuple[str, str], ...]]


class Counters:
    """Thread-safe monotonic counters with labels."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[Sample, int] = {}

    def add(self, name: str, amount: int = 1, **labels: str) -> None:
        if name not in COUNTERS:
            raise KeyError(f"unknown counter {name!r}")
        if amount <= 0:
            return
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def get(self, name: str, **labels: str) -> int:
        """One series, or the sum over all series of `name` when no labels are given."""
        with self._lock:
            if labels:
                return self._values.get((name, tuple(sorted(labels.items()))), 0)
            return sum(v for (n, _), v in self._values.items() if n == name)

    def snapshot(self) -> dict[Sample, int]:
        with self._lock:
            return dict(self._values)

    def dump(self) -> bytes | None:
        """The counts as JSON for another process to `load`; None when there are none."""
        values = self.snapshot()
        if not values:
            return None
        return json.dumps([[n, list(map(list, ls)), v] for (n, ls), v in values.items()]).encode()

    def load(self, payload: bytes) -> None:
        """Add counts that another process (a work horse) dumped."""
        for name, labels, value in json.loads(payload):
            if name in COUNTERS and isinstance(value, int):
                self.add(name, value, **{str(k): str(v) for k, v in labels})

    def reset(self) -> None:
        """Start from zero (a forked child must not report its parent's counts)."""
        with self._lock:
            self._values.clear()


def render_prometheus(
    snapshots: Iterable[tuple[Mapping[str, str], Mapping[Sample, int]]],
) -> str:
    """Prometheus text format (0.0.4) for several processes' snapshots.

    Each snapshot comes with the labels that tell its process apart (`service`,
    `process`); every counter is declared (HELP, TYPE) even before it has a series.
    """
    series: dict[str, list[tuple[dict[str, str], int]]] = {name: [] for name in COUNTERS}
    for process_labels, values in snapshots:
        for (name, labels), value in values.items():
            if name in series:
                series[name].append(({**process_labels, **dict(labels)}, value))
    lines: list[str] = []
    for name, help_text in COUNTERS.items():
        metric = f"tracegate_{name}_total"
        lines.append(f"# HELP {metric} {help_text}")
        lines.append(f"# TYPE {metric} counter")
        for merged, value in sorted(series[name], key=lambda s: sorted(s[0].items())):
            lines.append(f"{metric}{_labels(merged)} {value}")
    return "\n".join(lines) + "\n"


def _labels(labels: Mapping[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
