"""Waits that show they are waiting: a countdown on a terminal, silence in a log."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["wait_until"]


def wait_until(
    ready: Callable[[], bool],
    out: TextIO,
    label: str,
    wait_s: float,
    *,
    give_up: Callable[[], bool] | None = None,
    interval: float = 0.3,
) -> bool:
    """Poll `ready` for up to `wait_s` seconds; False at the deadline or once `give_up`.

    On a terminal a `waiting for <label> ... 12s` line counts down in place (it fits
    80 columns for labels up to 60 characters) and is ended when the wait is over.
    """
    deadline = time.monotonic() + wait_s
    shown = False
    try:
        while time.monotonic() < deadline:
            if ready():
                return True
            if give_up is not None and give_up():
                return False
            if out.isatty():
                left = max(0, int(deadline - time.monotonic()))
                print(f"\r  waiting for {label[:60]} ... {left:2d}s", end="", file=out, flush=True)
                shown = True
            time.sleep(interval)
        return False
    finally:
        if shown:
            print(file=out, flush=True)
