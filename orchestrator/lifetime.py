"""Which kernels die with this process, and the tasks kept running for them meanwhile.

The rule is jupyter_client's, so code that swaps in our managers leaks nothing: the
kernels a process started, or explicitly took, and has neither shut down nor detached
are shut down at a normal interpreter exit (as jupyter_client's kernels die with their
parent), unless their manager has ``outlive_process`` (the gateway's, and kernels a
multi-kernel manager restored but did not start). Those are released: their tunnels
closed, their leases given up. A process killed outright runs no exit hook, and its
kernels stay for the next process to re-attach.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import typing as t
import weakref
from collections.abc import Coroutine

from . import forks

log = logging.getLogger("kernel-orchestrator")

# Kernel managers whose kernels this process holds (see the module docstring).
_live: weakref.WeakSet[t.Any] = weakref.WeakSet()
# Tasks started from callbacks (a lease taken over, a restart followed), kept until
# they end so that they are not collected half-way.
_background: set[asyncio.Future[t.Any]] = set()
_exit_hook_installed = False
_exit_lock = threading.Lock()


def spawn(coro: Coroutine[t.Any, t.Any, t.Any]) -> asyncio.Future[t.Any]:
    """Run ``coro`` on the running loop, kept referenced until it ends."""
    task = asyncio.ensure_future(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


def remember(km: t.Any) -> None:
    """``km``'s kernel is held by this process: shut down (or released) at exit."""
    global _exit_hook_installed
    _live.add(km)
    with _exit_lock:
        if not _exit_hook_installed:
            # Before concurrent.futures shuts its thread pools down at exit, which
            # atexit handlers run after: the provisioners still need them.
            register = getattr(threading, "_register_atexit", None)
            if register is not None:
                register(_shutdown_at_exit)
            else:  # pragma: no cover - very old or unusual Pythons
                import atexit

                atexit.register(_shutdown_at_exit)
            _exit_hook_installed = True


def forget(km: t.Any) -> None:
    """``km``'s kernel is no longer this process's to stop (shut down, detached, lost)."""
    _live.discard(km)


def _shutdown_at_exit() -> None:
    """Shut down (or, with ``outlive_process``, release) the kernels still held at exit."""
    kms = list(_live)
    _live.clear()
    stop = [km for km in kms if not km.outlive_process]
    for km in kms:
        if km.outlive_process:
            with contextlib.suppress(Exception):
                km.release()
    if not stop:
        return

    async def shutdown(km: t.Any) -> None:
        try:
            # The coroutine itself: a blocking manager's shutdown_kernel wraps it in
            # a loop of its own, which cannot run inside this one.
            await asyncio.wait_for(km._async_shutdown_kernel(now=True), 20)
        except Exception as e:
            log.warning("kernel %s: shutdown at exit failed: %s", km.kernel_id, e)
            with contextlib.suppress(Exception):
                km.release()

    async def shutdown_all() -> None:
        await asyncio.gather(*(shutdown(km) for km in stop))

    try:
        asyncio.run(shutdown_all())
    except Exception as e:
        log.warning("shutting down kernels at exit: %s", e)


@forks.reset_in_child
def _reset_after_fork() -> None:
    """A forked child does not stop its parent's kernels at its exit."""
    global _live, _background, _exit_lock
    _live = weakref.WeakSet()
    _background = set()
    _exit_lock = threading.Lock()
