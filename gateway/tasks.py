"""The task registry: the allow-list of what `POST /v1/jobs` may enqueue.

A client names a task; the registry maps the name to an importable function given in
configuration (`TRACEGATE_TASKS="resize=images.jobs:resize"` or a `[tasks]` table in
the TOML file). A client can never name a function path. The demo tasks `echo`,
`fail` and `sleep` are registered only when `TRACEGATE_DEMO_TASKS=1`.
"""

from __future__ import annotations

import importlib
import inspect
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DEMO_TASKS", "Registry", "Task", "echo", "fail", "sleep"]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
_PATH = re.compile(r"^[A-Za-z_][\w.]*[:.][A-Za-z_]\w*$")


class DemoFailure(RuntimeError):
    """Raised on purpose by the demo task `fail`."""


def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Demo: return the arguments it was given."""
    return {"args": list(args), "kwargs": kwargs}


def fail(message: str = "the demo task failed on purpose") -> None:
    """Demo: raise, so Sentry gets an error linked to the job's trace."""
    raise DemoFailure(message)


def sleep(seconds: float = 1.0) -> float:
    """Demo: sleep for `seconds` (at most 60) and return it."""
    seconds = float(seconds)
    if not 0 <= seconds <= 60:
        raise ValueError("seconds must be between 0 and 60")
    time.sleep(seconds)
    return seconds


DEMO_TASKS = {
    "echo": "gateway.tasks:echo",
    "fail": "gateway.tasks:fail",
    "sleep": "gateway.tasks:sleep",
}


@dataclass(frozen=True)
class Task:
    name: str
    path: str  # module:function
    function: Callable[..., Any]

    @property
    def rq_path(self) -> str:
        """The dotted path rq stores in the job and imports in the worker."""
        return self.path.replace(":", ".")

    def check_arguments(self, args: list[Any], kwargs: Mapping[str, Any]) -> str | None:
        """Why these arguments cannot call the function, or None."""
        try:
            inspect.signature(self.function).bind(*args, **kwargs)
        except TypeError as error:
            return str(error)
        except ValueError:  # no signature (a builtin): let the worker decide
            return None
        return None


class Registry:
    """Task names mapped to importable functions, resolved and checked at start."""

    def __init__(self, tasks: Mapping[str, Task]) -> None:
        self._tasks = dict(tasks)

    def get(self, name: str) -> Task | None:
        return self._tasks.get(name)

    def names(self) -> list[str]:
        return sorted(self._tasks)

    @classmethod
    def from_paths(cls, paths: Mapping[str, str]) -> tuple[Registry, list[str]]:
        """Resolve `name -> module:function`; returns the registry and its problems."""
        tasks: dict[str, Task] = {}
        problems: list[str] = []
        for name, path in paths.items():
            if not _NAME.match(name):
                problems.append(f"TRACEGATE_TASKS: {name!r} is not a task name")
                continue
            if not _PATH.match(path):
                problems.append(f"TRACEGATE_TASKS: {name}={path!r} is not module:function")
                continue
            module_name, _, attribute = path.replace(":", ".").rpartition(".")
            try:
                function = getattr(importlib.import_module(module_name), attribute)
            except (ImportError, AttributeError) as error:
                problems.append(f"TRACEGATE_TASKS: {name}={path} cannot be imported ({error})")
                continue
            if not callable(function):
                problems.append(f"TRACEGATE_TASKS: {name}={path} is not callable")
                continue
            tasks[name] = Task(name, f"{module_name}:{attribute}", function)
        return cls(tasks), problems
