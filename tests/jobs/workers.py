"""Worker classes that put a stop signal where rq's handler would do harm."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from rq.exceptions import StopRequested

from gateway.worker import GatewayWorker
from otel.rq import TracedWorker


class StoppedDuringTakeOver(GatewayWorker):
    """SIGTERM arrives once, while the idle worker takes over its work horse's spans,
    inside code that, like the Sentry bridge's `on_end`, guards with `except Exception`."""

    _signalled = False

    def _take_over_spans(self) -> None:
        if not self._signalled and self.connection.llen(self._handoff_key()):
            self._signalled = True
            print(f"SIGTERM during the take-over, worker {self.get_state()}", flush=True)
            try:  # rq's handler runs in here, unless the signal is held
                os.kill(os.getpid(), signal.SIGTERM)
                deadline = time.monotonic() + 0.5
                while time.monotonic() < deadline:
                    pass
            except Exception as error:
                print(f"swallowed {type(error).__name__}", flush=True)
        super()._take_over_spans()


class StopEscapesTheLoop(GatewayWorker):
    """SIGTERM between two iterations of rq's loop, at its `while True`: rq's handler
    raises StopRequested outside the loop's `try`, so only rq's teardown runs and the
    exception leaves `work()`. Emulated: the waiting jobs run, then it is raised."""

    def work(self, *args: Any, **kwargs: Any) -> bool:
        kwargs["burst"] = True
        super().work(*args, **kwargs)
        print("StopRequested leaves work()", flush=True)
        raise StopRequested()


class StopInTeardown(TracedWorker):
    """The same stop seen from rq's own command line (`rq worker -w ...`): raised after
    rq's teardown, it leaves rq's `work()` (emulated from the teardown)."""

    def teardown(self) -> None:
        super().teardown()
        print("StopRequested leaves rq's loop", flush=True)
        raise StopRequested()
