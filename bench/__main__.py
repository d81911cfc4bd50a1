"""Benchmarks (not tests): `make bench` or `python -m bench [--quick] [--only NAME ...]`.

Each benchmark reports ratios against its alternatives measured in the same run:

- http      tracegate against bare Flask, OpenTelemetry alone and sentry-sdk's three ways
            of tracing, served by gunicorn, with what their receivers got;
- spans     µs per span in-process: the SDK alone, sentry-sdk's SentrySpanProcessor, the
            bridge in both modes;
- rq        enqueue and processing jobs/s: plain rq, sentry-sdk's RqIntegration,
            tracegate; forking and simple workers;
- rqcost    where a traced job's extra cost goes: Redis commands, CPU of the worker, its
            work horses and its threads, page faults, RSS (plain rq against tracegate);
- memory    a gateway's RSS over many requests, with healthy and dead backends;
- capacity  jobs/s of 1, 2, 4 workers and requests/s of 1, 2 gateway processes;
- flush     the per-job cost of the work horse's flush: handing spans over vs exporting.

The Markdown goes to stdout (and to `--write FILE`), progress to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import capacity, http, memory, rq_cost, rq_flush, rq_rates, spans

NAMES = ("http", "spans", "rq", "rqcost", "memory", "capacity", "flush")


def _flush(quick: bool) -> list[str]:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rq_flush.run(50 if quick else 200)
    return [
        "### The work horse's flush (forking worker)",
        "",
        "```",
        *out.getvalue().splitlines(),
        "```",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="short runs of every benchmark")
    parser.add_argument("--only", nargs="+", choices=NAMES, help="run just these")
    parser.add_argument("--rq-jobs", type=int, help="jobs per RQ run (default: by mode)")
    parser.add_argument(
        "--memory-requests", type=int, help="requests per memory scenario (default: by mode)"
    )
    parser.add_argument("--write", type=Path, help="also write the Markdown to this file")
    args = parser.parse_args()
    quick: bool = args.quick
    benchmarks: dict[str, Callable[[], list[str]]] = {
        "http": lambda: http.run(quick),
        "spans": lambda: spans.run(quick),
        "rq": lambda: rq_rates.run(quick, args.rq_jobs),
        "rqcost": lambda: [
            "### Where a traced job's extra cost goes",
            "",
            *rq_cost.run(args.rq_jobs or (200 if quick else 1000)),
        ],
        "memory": lambda: memory.run(quick, args.memory_requests),
        "capacity": lambda: capacity.run(quick),
        "flush": lambda: _flush(quick),
    }
    lines: list[str] = []
    for name in args.only or NAMES:
        started = time.monotonic()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        section = benchmarks[name]()
        print(f"[bench] {name}: {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        lines += [*section, ""]
        print("\n".join(section) + "\n", flush=True)
        if args.write:
            args.write.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
