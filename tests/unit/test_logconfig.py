"""gateway.logconfig: a fork never catches the log stream in the middle of a line."""

from __future__ import annotations

import io
import logging
import os
import threading
import time
from collections.abc import Iterator

import pytest

from gateway.logconfig import ForkSafeStreamHandler


def _forks_that_hang(handler: logging.Handler, forks: int) -> int:
    """Fork while another thread logs through `handler` into a pipe drained slowly (its
    writes block inside the stream, holding the stream's buffer lock); each child logs
    one line and exits. 1 as soon as a child is still stuck after 2 s, else 0."""
    logger = logging.getLogger(f"tests.fork.{id(handler)}")
    logger.propagate = False
    logger.addHandler(handler)
    stop = threading.Event()

    def chatter() -> None:
        while not stop.is_set():
            logger.warning("x" * 2000)

    threads = [threading.Thread(target=chatter, daemon=True)]
    threads[0].start()
    try:
        for _ in range(forks):
            time.sleep(0.01)
            pid = os.fork()
            if pid == 0:
                logger.warning("the child logs")
                os._exit(0)
            deadline = time.monotonic() + 2
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    return 1
                time.sleep(0.01)
    finally:
        stop.set()
        logger.removeHandler(handler)
    return 0


@pytest.fixture
def slow_pipe() -> Iterator[io.TextIOWrapper]:
    read_fd, write_fd = os.pipe()
    stream = io.TextIOWrapper(io.BufferedWriter(io.FileIO(write_fd, "w"), 65536))

    def drain() -> None:
        while True:
            time.sleep(0.002)
            try:
                if not os.read(read_fd, 8192):
                    return
            except OSError:
                return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    yield stream
    stream.close()
    os.close(read_fd)


def test_a_child_forked_while_a_thread_logs_can_log(slow_pipe: io.TextIOWrapper) -> None:
    assert _forks_that_hang(ForkSafeStreamHandler(slow_pipe), forks=20) == 0


def test_the_plain_stream_handler_does_hang_there(slow_pipe: io.TextIOWrapper) -> None:
    # The same forks with logging's own handler: the test can tell the difference.
    assert _forks_that_hang(logging.StreamHandler(slow_pipe), forks=20) == 1
