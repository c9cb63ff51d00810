"""Multi-kernel managers that restore their kernels from the store at start-up.

On start-up every saved record is examined concurrently:

* a kernel that is alive and answers ``kernel_info`` within ``reattach_timeout`` is
  re-attached, unchanged (same id, ports, key, state);
* a kernel that is gone has its provisioner's cleanup run and its record removed, so
  nothing it held (ports, files, containers, pods) leaks;
* a kernel that cannot be re-attached for another reason is left alone, with a log
  line that says why.

Restored kernels nobody owns are claimed (see :mod:`orchestrator.ownership`); one
that another live process owns is attached as a client and taken over when that
owner's lease lapses. Restored kernels were not started by this process, so they
outlive it: at a normal exit they are released, never shut down (a script that only
builds ``AsyncMultiKernelManager()`` leaves every kernel the CLI started running);
only the kernels a manager started itself die with it, as jupyter_client's would.
A manager whose kernel is taken over by another process, or given up (a failed
restart, the restart limit), drops it.

If the restore itself fails (the store is unreachable, say), it is retried with
backoff; ``restore_error`` says why meanwhile, and later calls are not poisoned by
the failure: a start goes ahead and meets the store on its own.
"""

from __future__ import annotations

import asyncio
import functools
import os
import typing as t
from dataclasses import dataclass, field

import zmq
import zmq.asyncio
from jupyter_client import multikernelmanager as jc_mkm
from jupyter_core.paths import jupyter_runtime_dir
from jupyter_core.utils import ensure_dir_exists, run_sync
from traitlets import Bool, DottedObjectName, Float, Instance, Int, Unicode, default
from traitlets.config import LoggingConfigurable

from .errors import KernelGoneError, UnknownKernelError
from .manager import shared_store
from .store import KernelRecord, KernelStore


@dataclass
class RestoreReport:
    """What a restore did, kernel id by kernel id."""

    reattached: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


class PersistentMultiKernelManagerMixin(LoggingConfigurable):
    """Adds the kernel store and start-up restore to jupyter_client's multi-kernel managers."""

    kernel_store = Instance(KernelStore, allow_none=True)  # type: ignore[call-overload]
    store_url = Unicode("", config=True, help="Kernel store URL; see KernelManager.store_url.")
    restore_on_start = Bool(
        True, config=True, help="Re-attach the kernels saved in the store when starting."
    )
    reattach_timeout = Float(
        10.0, config=True, help="Seconds a saved kernel has to answer kernel_info at restore."
    )
    reattach_concurrency = Int(
        64, config=True, help="How many saved kernels are examined at once during restore."
    )
    restore_max_backoff = Float(
        30.0, config=True, help="Longest wait, in seconds, between retries of a failed restore."
    )

    if t.TYPE_CHECKING:
        _kernels: dict[str, t.Any]
        log: t.Any
        connection_dir: str
        kernel_spec_manager: t.Any

        def kernel_manager_factory(self, *args: t.Any, **kwargs: t.Any) -> t.Any: ...

    _restore_task: asyncio.Future[RestoreReport] | None = None
    last_restore: RestoreReport | None = None
    restore_error: str = ""  # why the last restore attempt failed ('' if none did)
    restore_attempts: int = 0

    @default("connection_dir")
    def _default_connection_dir(self) -> str:
        """Jupyter's runtime dir (as jupyter_server's manager uses), not jupyter_client's
        default of the working directory: connection files hold the kernel's key, and
        must not be left in whatever directory the process was started from."""
        runtime_dir = jupyter_runtime_dir()
        ensure_dir_exists(runtime_dir, 0o700)
        return runtime_dir

    @default("context")
    def _default_shared_context(self) -> zmq.Context[t.Any]:
        """The process-wide zmq context, never one of the manager's own.

        jupyter_client gives each multi-kernel manager a context of its own and destroys it
        from ``__del__``. The garbage collector runs that on whichever thread happens to
        allocate: when it is a thread holding a lock (the kernel store's) while sockets of
        that context are still open elsewhere, ``term()`` waits for them for ever and the
        process deadlocks. A shared context is thread-safe, costs one I/O thread for the
        whole process, and is never destroyed by a collected manager.
        """
        if isinstance(self, jc_mkm.AsyncMultiKernelManager):
            return zmq.asyncio.Context.instance()
        return zmq.Context.instance()

    @default("kernel_store")
    def _default_kernel_store(self) -> KernelStore:
        return shared_store(self.store_url or None)

    def _create_kernel_manager_factory(self) -> t.Callable[..., t.Any]:
        make = super()._create_kernel_manager_factory()  # type: ignore[misc]

        def create_kernel_manager(*args: t.Any, **kwargs: t.Any) -> t.Any:
            kwargs.setdefault("kernel_store", self.kernel_store)
            km = make(*args, **kwargs)
            km.on_ownership_lost(functools.partial(self._ownership_lost, km))
            km.on_dropped(functools.partial(self._kernel_dropped, km))
            return km

        return create_kernel_manager  # type: ignore[no-any-return]

    def _ownership_lost(self, km: t.Any, reason: str) -> None:
        """Another process owns ``km``'s kernel now: stop serving it from here."""
        kernel_id = str(km.kernel_id)
        if kernel_id in self._kernels and self._kernels[kernel_id] is km:
            self.log.warning("kernel %s dropped: %s", kernel_id, reason)
            self._forget_kernel(kernel_id)
        km.release()

    def _kernel_dropped(self, km: t.Any, reason: str) -> None:
        """``km``'s kernel was given up (it released everything): not ours to list."""
        kernel_id = str(km.kernel_id)
        if self._kernels.get(kernel_id) is km:
            self.log.warning("kernel %s removed: %s", kernel_id, reason)
            self._forget_kernel(kernel_id)

    def _forget_kernel(self, kernel_id: str) -> None:
        self._kernels.pop(kernel_id, None)

    def should_restore(self, record: KernelRecord) -> bool:
        """Whether the restore attaches to ``record``'s kernel (all of them, here)."""
        return True

    async def _restore_one(self, record: KernelRecord, report: RestoreReport) -> None:
        kernel_id = record.kernel_id
        connection_file = record.connection_file or os.path.join(
            self.connection_dir, f"kernel-{kernel_id}.json"
        )
        kwargs: dict[str, t.Any] = {}
        if self.kernel_spec_manager:
            kwargs["kernel_spec_manager"] = self.kernel_spec_manager
        km = self.kernel_manager_factory(
            connection_file=connection_file,
            parent=self,
            log=self.log,
            kernel_name=record.kernel_name,
            **kwargs,
        )
        try:
            # Not started here: it outlives this process whatever the manager's default.
            km.outlive_process = True
            await km._async_reattach(record, timeout=self.reattach_timeout, own=None)
        except UnknownKernelError:  # removed meanwhile (shut down through another replica)
            km.release()
            report.removed.append(kernel_id)
        except KernelGoneError:
            self.log.info(
                "kernel %s (%s) is gone; cleaning up its record", kernel_id, record.kernel_name
            )
            try:
                await km._async_discard()
            except Exception as e:
                self.log.warning("kernel %s: cleanup of a gone kernel failed: %s", kernel_id, e)
            report.removed.append(kernel_id)
        except Exception as e:
            reason = str(e) or type(e).__name__
            self.log.warning(
                "kernel %s (%s) could not be re-attached: %s", kernel_id, record.kernel_name, reason
            )
            km.release()
            report.failed[kernel_id] = reason
        else:
            self._kernels[kernel_id] = km
            report.reattached.append(kernel_id)
            self.log.info("kernel %s (%s) re-attached", kernel_id, record.kernel_name)

    async def _async_restore_kernels(self) -> RestoreReport:
        """Re-attach every saved kernel still alive; clean up the records of the others."""
        assert self.kernel_store is not None
        report = RestoreReport()
        records = [
            r
            for r in await self.kernel_store.list()
            if r.kernel_id not in self._kernels and self.should_restore(r)
        ]
        gate = asyncio.Semaphore(max(1, self.reattach_concurrency))
        # Each re-attach begins with a few milliseconds of work that does not wait
        # (its manager, session and provisioner are made): begun all at once, 64 of
        # them held the event loop for a third of a second, and every request (a
        # probe's /healthz among them) waited. One begins per turn of the loop.
        pacer = asyncio.Lock()

        async def bounded(record: KernelRecord) -> None:
            async with gate:
                async with pacer:
                    await asyncio.sleep(0)
                await self._restore_one(record, report)

        await asyncio.gather(*(bounded(r) for r in records))
        self.last_restore = report
        if records:
            self.log.info(
                "restored kernels from %s: %d re-attached, %d removed, %d failed",
                self.kernel_store.url,
                len(report.reattached),
                len(report.removed),
                len(report.failed),
            )
        return report

    async def _restore_with_retries(self) -> RestoreReport:
        """Restore; on failure, retry with backoff until it succeeds."""
        delay = 0.5
        while True:
            self.restore_attempts += 1
            try:
                report = await self._async_restore_kernels()
            except Exception as e:
                self.restore_error = str(e) or type(e).__name__
                self.log.warning(
                    "restoring kernels failed (attempt %d, retry in %.1fs): %s",
                    self.restore_attempts,
                    delay,
                    self.restore_error,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.restore_max_backoff)
                continue
            self.restore_error = ""
            return report

    def _start_restore(self) -> asyncio.Future[RestoreReport]:
        if self._restore_task is None:
            self._restore_task = asyncio.ensure_future(self._restore_with_retries())
        return self._restore_task

    async def _restore_once(self) -> RestoreReport:
        """Run the restore now (or wait for the one already under way)."""
        return await asyncio.shield(self._start_restore())

    async def restored(self) -> RestoreReport | None:
        """Wait for the start-up restore (starting it if needed), if one is configured.

        While the restore keeps failing this does not wait for it: the caller goes on
        (and meets the same fault, the store, with an error of its own).
        """
        if not self.restore_on_start:
            return None
        task = self._start_restore()
        if not task.done() and self.restore_error:
            return None
        return await asyncio.shield(task)

    @property
    def restore_done(self) -> bool:
        return self._restore_task is not None and self._restore_task.done()


class MultiKernelManager(PersistentMultiKernelManagerMixin, jc_mkm.MultiKernelManager):
    """jupyter_client's ``MultiKernelManager`` whose kernels survive its process."""

    kernel_manager_class = DottedObjectName(
        "orchestrator.manager.IOLoopKernelManager",
        config=True,
        help="The kernel manager class (must be one of kernel-orchestrator's managers).",
    )

    restore_kernels = run_sync(PersistentMultiKernelManagerMixin._async_restore_kernels)

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        if self.restore_on_start:
            self.restore_kernels()


class AsyncMultiKernelManager(PersistentMultiKernelManagerMixin, jc_mkm.AsyncMultiKernelManager):
    """jupyter_client's ``AsyncMultiKernelManager`` whose kernels survive its process.

    The restore starts as soon as an event loop runs (at construction if one is
    running, else on the first awaited call); ``await mkm.restored()`` waits for it.
    """

    kernel_manager_class = DottedObjectName(
        "orchestrator.manager.AsyncIOLoopKernelManager",
        config=True,
        help="The kernel manager class (must be one of kernel-orchestrator's managers).",
    )

    def __init__(self, *args: t.Any, **kwargs: t.Any) -> None:
        super().__init__(*args, **kwargs)
        if self.restore_on_start:
            try:
                asyncio.get_running_loop()
            except RuntimeError:
                return
            self._start_restore()

    restore_kernels = PersistentMultiKernelManagerMixin._restore_once

    async def start_kernel(  # type: ignore[override]
        self, *, kernel_name: str | None = None, **kwargs: t.Any
    ) -> str:
        await self.restored()
        return await super()._async_start_kernel(kernel_name=kernel_name, **kwargs)

    async def shutdown_kernel(  # type: ignore[override]
        self, kernel_id: str, now: bool | None = False, restart: bool | None = False
    ) -> None:
        await self.restored()
        await super()._async_shutdown_kernel(kernel_id, now=now, restart=restart)

    async def restart_kernel(self, kernel_id: str, now: bool = False) -> None:  # type: ignore[override]
        await self.restored()
        await super()._async_restart_kernel(kernel_id, now=now)

    async def shutdown_all(self, now: bool = False) -> None:  # type: ignore[override]
        await self.restored()
        await super()._async_shutdown_all(now=now)

    async def detach_all(self) -> None:
        """Stop managing every kernel without stopping any (for a graceful orchestrator exit)."""
        for kernel_id in list(self._kernels):
            self._kernels.pop(kernel_id).detach()
