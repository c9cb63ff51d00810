"""jupyter_client's auto-restarters, restarting only what this process still owns.

jupyter_client's restarter sees a dead kernel, tells its listeners "restart" (Jupyter
Server then shows clients a restarting kernel) and restarts it. A process that no
longer owns the kernel, because another process shut it down or took it over, must
do neither: so before anything happens, a dead kernel's ownership is checked against
the store. If the kernel is not ours any more the restarter stops, and if the store
cannot say (it is unreachable) this round does nothing rather than risk bringing a
shut-down kernel back.
"""

from __future__ import annotations

import typing as t

from jupyter_client.ioloop.restarter import AsyncIOLoopKernelRestarter, IOLoopKernelRestarter
from jupyter_core.utils import run_sync

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


class OwnerRestarter(IOLoopKernelRestarter):
    """The blocking managers' restarter, for the owner only."""

    def poll(self) -> None:
        km = self.kernel_manager
        if not km.shutting_down and not km.is_alive() and not run_sync(_still_ours)(self):
            return
        super().poll()


class AsyncOwnerRestarter(AsyncIOLoopKernelRestarter):
    """The async managers' restarter, for the owner only."""

    async def poll(self) -> None:  # type: ignore[override]
        if not await self.kernel_manager.is_alive() and not await _still_ours(self):
            return
        await super().poll()
