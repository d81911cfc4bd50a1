"""Run an object's own methods around every fork, for as long as the object lives.

Threads, locks and connections do not survive a fork whole: a lock another thread held
at that moment stays locked in the child forever, a pooled connection is shared with
the parent. `at_fork(obj, after_in_child="_renew")` calls `obj._renew()` in each forked
child; the registration holds only a weak reference, so it never keeps `obj` alive
(`os.register_at_fork` cannot unregister).

`keep_inherited(obj)` is for what a child stops using of its parent's state (queued
spans, open segments): kept referenced instead of freed. Freeing writes to every object
it frees (reference counts, the allocator's lists), and each page written is copied
from the parent's: a forked RQ work horse that dropped its worker's export queue paid
about 230 page faults and 1.4 ms for it. Kept, the memory stays shared with the parent.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable

__all__ = ["at_fork", "keep_inherited"]

# What forked children inherited and no longer use (see `keep_inherited`). The process
# that forks never adds to it, only its children do: one entry per object and fork.
_inherited: list[object] = []


def keep_inherited(obj: object) -> None:
    """Keep `obj`, inherited from the parent and no longer used, from being freed here."""
    if obj:
        _inherited.append(obj)


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
