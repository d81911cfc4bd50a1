"""Where an RQ job's extra cost goes: plain rq against tracegate, per job.

For `jobs` trivial jobs (`bench.rq_rates.noop`), each variant in turn, with the same
peers as `bench.rq_rates` (Redis, a live OTLP receiver, a Sentry envelope receiver):

- **Redis commands per job** the worker sends (Redis's `INFO commandstats`, reset
  after the enqueue);
- for rq's forking `Worker`: the worker's own CPU (user, system) and that of the work
  horses it reaped, their minor page faults (copy-on-write after each fork), and the
  worker's RSS just before it exits;
- for `SimpleWorker`: the CPU of each thread of the worker (`/proc/<pid>/task`), the
  main thread first.

Read from `/proc` every 10 ms while `rq worker --burst` runs; what the same worker
takes to start and exit with no job (a burst on an empty queue, run first) is taken
off the CPU, the faults and the main thread's CPU.

    python -m bench.rq_cost [--jobs N]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

from bench import rq_rates

_TICK = os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _watch(args: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run a burst worker; its last `/proc` readings (process and threads)."""
    process = subprocess.Popen(
        args, env=env, cwd=rq_rates.ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    last: dict[str, Any] = {"threads": {}}
    while process.poll() is None:
        fields = rq_rates.proc_stat(f"/proc/{process.pid}/stat")
        if fields is not None:
            # minflt, cminflt, then utime, stime, cutime, cstime (in clock ticks)
            last["process"] = [int(fields[i]) for i in (7, 8, 11, 12, 13, 14)]
            last["rss"] = _rss_mib(process.pid) or last.get("rss")
        try:
            tids = os.listdir(f"/proc/{process.pid}/task")
        except OSError:
            tids = []
        for tid in tids:
            fields = rq_rates.proc_stat(f"/proc/{process.pid}/task/{tid}/stat")
            if fields is not None:
                last["threads"][int(tid)] = (int(fields[11]), int(fields[12]))
        time.sleep(0.01)
    _, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} exited {process.returncode}:\n{stderr[-3000:]!r}")
    last["pid"] = process.pid
    return last


def _ms(ticks: int, jobs: int) -> float:
    return ticks * 1000 / _TICK / jobs


def _check_delivered(client: Any, peers: Any, variant: str, jobs: int) -> None:
    """Every job finished and the variant delivered what it should: a run that lost
    work would look cheap."""
    from rq.registry import FinishedJobRegistry

    finished = FinishedJobRegistry(rq_rates.QUEUE, connection=client).count
    time.sleep(0.2)  # both processes flushed before exiting; a receiver may still read
    received = peers.received()
    expected = rq_rates._expected(variant, jobs)
    got = {
        "finished": finished,
        "spans": received["spans"],
        "transactions": received["request_transactions"] + received["job_transactions"],
    }
    # one request transaction (the enqueuer) and one job transaction per job
    wanted = {
        "finished": jobs,
        "spans": expected["spans"],
        "transactions": 2 * expected["transactions"],
    }
    if got != wanted:
        raise RuntimeError(f"{variant}: delivered {got}, expected {wanted}")


def run(jobs: int) -> list[str]:
    import redis

    from bench.receivers import keep_alive
    from tests.peers.envelope import EnvelopeReceiver
    from tests.peers.otlp import OTLPReceiver
    from tests.peers.redis import RedisServer

    lines = [
        "| worker | variant | Redis commands/job | CPU ms/job (user + system) | "
        "of it in work horses | page faults/job: worker, each horse | worker RSS MiB |",
        "|---|---|---:|---|---|---|---:|",
    ]
    threads: list[str] = []
    with RedisServer() as server, OTLPReceiver() as otlp, EnvelopeReceiver() as sentry:
        keep_alive(otlp)
        keep_alive(sentry)
        peers = rq_rates._Peers(server.url, otlp, sentry)
        client = redis.Redis.from_url(server.url)
        for worker in rq_rates.WORKER_CLASSES:
            for variant in ("plain", "tracegate"):
                env = peers.env(variant)
                rq_rates.enqueue_fresh(peers, variant, jobs)
                idle = _watch(rq_rates.worker_command(server.url, variant, worker, "idle"), env)
                client.config_resetstat()
                seen = _watch(rq_rates.worker_command(server.url, variant, worker), env)
                stats = client.info("commandstats")  # before the check's own commands
                _check_delivered(client, peers, variant, jobs)
                commands = sum(int(v["calls"]) for v in stats.values()) / jobs
                minflt, cminflt, utime, stime, cutime, cstime = (
                    after - before
                    for after, before in zip(seen["process"], idle["process"], strict=True)
                )
                horses = (
                    f"{_ms(cutime, jobs):.2f} + {_ms(cstime, jobs):.2f}"
                    if worker == "Worker"
                    else "—"
                )
                faults = (
                    f"{minflt / jobs:,.0f}, {cminflt / jobs:,.0f}" if worker == "Worker" else "—"
                )
                total = _ms(utime + cutime, jobs), _ms(stime + cstime, jobs)
                lines.append(
                    f"| {worker} | {variant} | {commands:.1f} | {total[0]:.2f} + {total[1]:.2f} "
                    f"| {horses} | {faults} | {seen.get('rss') or 0:.0f} |"
                )
                if worker == "SimpleWorker":
                    ranked = sorted(
                        seen["threads"].items(),
                        key=lambda item: (item[0] != seen["pid"], -sum(item[1])),
                    )
                    base = idle["threads"].get(idle["pid"], (0, 0))
                    cells = ", ".join(
                        f"main {_ms(user - base[0], jobs):.2f} + {_ms(system - base[1], jobs):.2f}"
                        if tid == seen["pid"]
                        else f"thread {_ms(user, jobs):.2f} + {_ms(system, jobs):.2f}"
                        for tid, (user, system) in ranked
                        if tid == seen["pid"] or user + system
                    )
                    threads.append(f"| {variant} | {cells} |")
                print(f"rq_cost: {worker} {variant} done", file=sys.stderr)
    return [
        f"`python -m bench.rq_cost --jobs {jobs}`: {jobs} jobs per run, one run each, less "
        "an idle burst worker's start-up and exit.",
        "",
        *lines,
        "",
        "SimpleWorker, CPU ms per job by thread (user + system; threads that used any; "
        "only the main thread's start-up is taken off):",
        "",
        "| variant | threads |",
        "|---|---|",
        *threads,
    ]


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.rq_cost")
    parser.add_argument("--jobs", type=int, default=500, help="jobs per run (default 500)")
    args = parser.parse_args()
    print("\n".join(run(args.jobs)))


if __name__ == "__main__":
    main()
