"""Waits count down on a terminal and stay silent in a log."""

from __future__ import annotations

import io

from gateway.progress import wait_until


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_sees_the_countdown_and_a_finished_line() -> None:
    calls = iter([False, False, True])
    out = Terminal()
    assert wait_until(lambda: next(calls), out, "the server span", 5, interval=0.01)
    text = out.getvalue()
    assert "\r  waiting for the server span ...  4s" in text
    assert text.endswith("\n")
    assert all(len(line) <= 80 for line in text.replace("\r", "\n").splitlines())


def test_a_log_gets_nothing_and_a_deadline_is_false() -> None:
    out = io.StringIO()
    assert not wait_until(lambda: False, out, "x" * 200, 0.05, interval=0.01)
    assert out.getvalue() == ""


def test_giving_up_ends_the_wait_at_once() -> None:
    out = Terminal()
    assert not wait_until(lambda: False, out, "a gateway", 30, give_up=lambda: True)
    assert out.getvalue() == ""
