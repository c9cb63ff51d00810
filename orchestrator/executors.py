"""One bounded thread pool per back-end, so one slow back-end never stalls the others.

The SDKs we drive (SQLite, paramiko, the docker and kubernetes clients) block. Run on
asyncio's default executor, an unreachable Docker engine or a hanging SSH connect
would use up the threads that the store and every other back-end need, and a restore
of many kernels would queue behind them. Each back-end therefore gets its own pool,
named after it (``store``, ``ssh-connect``, ``kubernetes``, ``docker:<engine url>``):
a stall stays where it happens.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .forks import reset_in_child

T = TypeVar("T")

# Threads per pool. SQLite serialises writers anyway; SSH connects and API calls are
# mostly waiting on the network, so more of them may be under way at once.
POOL_SIZES = {"store": 2, "ssh-connect": 8, "ssh": 16, "kubernetes": 32, "docker": 32}

_pools: dict[str, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def executor(name: str) -> ThreadPoolExecutor:
    """The pool for back-end ``name`` (sized by the part before any ``:``)."""
    with _lock:
        pool = _pools.get(name)
        if pool is None:
            size = POOL_SIZES.get(name.split(":", 1)[0], 8)
            pool = _pools[name] = ThreadPoolExecutor(
                max_workers=size, thread_name_prefix=f"ko-{name}"[:40]
            )
        return pool


async def run_blocking(name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` on back-end ``name``'s pool, awaited without blocking the loop."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor(name), functools.partial(fn, *args, **kwargs))


@reset_in_child
def _reset_after_fork() -> None:
    """A forked child has none of the parent's pool threads: new pools on first use."""
    global _pools, _lock
    _pools = {}
    _lock = threading.Lock()
