"""jupyter_client's auto-restarters, restarting only what this process still owns.

jupyter_client's restarter sees a dead kernel, tells its listeners "restart" (Jupyter
Server then shows clients a restarting kernel) and restarts it. A process that no
longer owns the kernel, because another process shut it down or took it over, must
do neither: so before anything happens, a dead kernel's ownership is checked against
the store. If the kernel is not ours any more the restarter stops, and if the store
cannot say (it is unreachable) this round does nothing rather than risk bringing a
shut-down kernel back.

A kernel that dies more often than ``restart_limit`` allows is given up here for good
(the manager's drop): what is left of it is removed and everything this process holds
for it released, where jupyter_client only stops watching it.
"""

from __future__ import annotations

import asyncio
import typing as t

from jupyter_client.ioloop.restarter import AsyncIOLoopKernelRestarter, IOLoopKernelRestarter
from jupyter_core.utils import run_sync

from . import lifetime
from .errors import OrchestratorError


async def _still_ours(restarter: t.Any) -> bool:
    km = restarter.kernel_manager
    try:
        await km._ensure_owner()
    except OrchestratorError as e:  # fenced, owned elsewhere, or the store is down
        restarter.log.info("not restarting kernel %s: %s", km.kernel_id, e)
        if km.owner_lost_reason:
            restarter.stop()
        return False
    return True


def _give_up(restarter: t.Any) -> None:
    """The restart limit is reached: the manager drops the kernel (clients were told)."""
    km = restarter.kernel_manager
    if km.dropped_reason:
        return
    reason = f"it died more than restart_limit ({restarter.restart_limit}) times in a row"
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        run_sync(km._async_drop)(reason, tell_clients=False)
        return
    lifetime.spawn(km._async_drop(reason, tell_clients=False))


class OwnerRestarter(IOLoopKernelRestarter):
    """The blocking managers' restarter, for the owner only."""

    def _fire_callbacks(self, event: t.Any) -> None:
        super()._fire_callbacks(event)
        if event == "dead":
            _give_up(self)

    def poll(self) -> None:
        km = self.kernel_manager
        if not km.shutting_down and not km.is_alive() and not run_sync(_still_ours)(self):
            return
        super().poll()


class AsyncOwnerRestarter(AsyncIOLoopKernelRestarter):
    """The async managers' restarter, for the owner only."""

    def _fire_callbacks(self, event: t.Any) -> None:
        super()._fire_callbacks(event)
        if event == "dead":
            _give_up(self)

    async def poll(self) -> None:  # type: ignore[override]
        if not await self.kernel_manager.is_alive() and not await _still_ours(self):
            return
        await super().poll()
