"""Benchmarks (not tests): `make bench` or `python -m bench [--jobs N]`.

Each benchmark reports ratios against its alternatives measured in the same run.
"""

from __future__ import annotations

import argparse

from bench import rq_flush


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--jobs", type=int, default=200, help="jobs per RQ scenario")
    args = parser.parse_args()
    rq_flush.run(args.jobs)


if __name__ == "__main__":
    main()
