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

jupyter_client polls every kernel every ``time_to_dead`` seconds, for ever: with a
thousand idle kernels that is 333 polls a second doing nothing. The async restarter
here polls on that timer only while it must: during a start's first
``stable_start_time`` seconds (which jupyter_client's stable-start rule needs), and
while the kernel's back-end cannot push news of its process. Otherwise it waits to be
told (:meth:`OrchestratorProvisionerMixin.watch_liveness`): an idle kernel then costs
no timer and no wake-up at all.
"""

from __future__ import annotations

import asyncio
import typing as t

from jupyter_client.ioloop.restarter import AsyncIOLoopKernelRestarter, IOLoopKernelRestarter
from jupyter_core.utils import run_sync
from tornado.ioloop import IOLoop

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
    """The async managers' restarter, for the owner only, on its timer only while the
    kernel's back-end cannot tell it of an exit (see the module docstring)."""

    _running = False  # between start() and stop(), whether or not the timer runs
    _watch: t.Any = None  # the provisioner's LivenessWatch, while subscribed
    _poll_lock: asyncio.Lock | None = None

    @property
    def timer_running(self) -> bool:
        """Whether this restarter polls on its timer now (benchmarks and tests ask)."""
        return self._pcallback is not None

    def start(self) -> None:
        self._running = True
        if self._watch is None:
            self._subscribe()
        super().start()  # the timer, until the start is stable and news is pushed

    def stop(self) -> None:
        self._running = False
        self._unsubscribe()
        super().stop()

    def _fire_callbacks(self, event: t.Any) -> None:
        super()._fire_callbacks(event)
        if event == "dead":
            _give_up(self)

    async def poll(self) -> None:  # type: ignore[override]
        # One poll at a time: a pushed notice and the timer must not both restart it.
        if self._poll_lock is None:
            self._poll_lock = asyncio.Lock()
        async with self._poll_lock:
            km = self.kernel_manager
            if not self._running or km.shutting_down:
                return  # stopped (a shutdown, a restart) while this poll waited its turn
            seen_alive = False
            try:
                seen_alive = await km.is_alive()
                if seen_alive or await _still_ours(self):
                    await super().poll()
            finally:
                # Quiet only after seeing it run: a death this round left alone (the
                # store could not say whose it is) or a poll that failed is looked at
                # again on the timer, as no second notice of it may ever come.
                self._settle(may_go_quiet=seen_alive)

    # ------------------------------------------------------------- pushed news
    def _subscribe(self) -> None:
        watch_liveness = getattr(self.kernel_manager.provisioner, "watch_liveness", None)
        if watch_liveness is None:
            return
        ioloop = IOLoop.current()
        try:
            self._watch = watch_liveness(lambda: ioloop.add_callback(self._told))
        except Exception as e:  # no news then: the timer goes on
            self.log.debug("kernel %s: no pushed liveness: %s", self.kernel_manager.kernel_id, e)

    def _unsubscribe(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()

    async def _told(self) -> None:
        # While the timer runs (a start not yet stable, a process just taken over) it
        # alone polls, at jupyter_client's pace: a notice then must not act at once on
        # a death that the kernel's last owner, still shutting it down, is causing.
        if self._running and self._pcallback is None:
            await self.poll()

    def _settle(self, may_go_quiet: bool) -> None:
        """Run the timer only while it is needed: the start is not yet stable, the last
        poll did not see the kernel run, or an exit might go untold (no watch, its
        source is down, or it watches an earlier process: a new subscription is then
        tried first)."""
        if not self._running:
            return
        if self._watch is None or not self._watch.pushed():
            self._unsubscribe()
            self._subscribe()
        quiet = (
            may_go_quiet
            and self._watch is not None
            and self._watch.pushed()
            and not self._initial_startup
            and not self._restarting
        )
        if quiet and self._pcallback is not None:
            IOLoopKernelRestarter.stop(self)
        elif not quiet and self._pcallback is None:
            IOLoopKernelRestarter.start(self)
