"""What a ``fork()``ed child must not inherit from its parent's orchestrator state.

A process that used a manager and then forks (multiprocessing's default on Linux, a
``ProcessPoolExecutor`` running notebooks) gives its child copies of every
process-wide registry (store connections, the lease keeper, thread pools, SSH
connections, watches) without the threads that serve them, and of their locks in
whatever state another thread held them. The child's first ``start_kernel()`` then
waits for ever on a lock or a pool thread that does not exist in it.

Each module that keeps such state registers a reset here; after a fork the child runs
them all, so it starts from nothing, as a fresh process would: its own store
connection, keeper and pools on first use. The parent's kernels are not the child's:
the child neither renews their leases nor shuts them down at its exit.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

log = logging.getLogger("kernel-orchestrator")

_resets: list[Callable[[], None]] = []


def reset_in_child(fn: Callable[[], None]) -> Callable[[], None]:
    """Register ``fn`` to run in the child after every ``fork()`` (a decorator)."""
    _resets.append(fn)
    return fn


def _after_fork_in_child() -> None:
    for fn in _resets:
        try:
            fn()
        except Exception:  # a reset must never break the child's start
            log.exception("resetting %s after fork", getattr(fn, "__qualname__", fn))


os.register_at_fork(after_in_child=_after_fork_in_child)
