"""Run an object's own methods around every fork, for as long as the object lives.

Threads, locks and connections do not survive a fork whole: a lock another thread held
at that moment stays locked in the child forever, a pooled connection is shared with
the parent. `at_fork(obj, after_in_child="_renew")` calls `obj._renew()` in each forked
child; the registration holds only a weak reference, so it never keeps `obj` alive
(`os.register_at_fork` cannot unregister).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable

__all__ = ["at_fork"]


def at_fork(
    obj: object,
    *,
    before: str | None = None,
    after_in_parent: str | None = None,
    after_in_child: str | None = None,
) -> None:
    """Call the named methods of `obj` before a fork and after it, in parent and child."""
    if not hasattr(os, "register_at_fork"):
        return
    ref = weakref.ref(obj)

    def caller(method: str | None) -> Callable[[], None] | None:
        if method is None:
            return None

        def call() -> None:
            target = ref()
            if target is not None:
                getattr(target, method)()

        return call

    hooks = {
        "before": caller(before),
        "after_in_parent": caller(after_in_parent),
        "after_in_child": caller(after_in_child),
    }
    os.register_at_fork(**{name: hook for name, hook in hooks.items() if hook is not None})
