"""Jupyter Server's kernel managers with our persistence, re-attach and ownership.

``OrchestratorMappingKernelManager`` is jupyter_server's ``AsyncMappingKernelManager``
(REST models, activity tracking, culling, metrics) whose kernels are our persisted,
re-attachable managers. At start-up it restores every saved kernel and gives each the
server's bookkeeping (activity watching, "dead" callback) with its last activity
taken from the store, so culling keeps working across restarts of the service.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import typing as t

from jupyter_server.services.kernels.kernelmanager import (
    AsyncMappingKernelManager,
    ServerKernelManager,
)
from traitlets import DottedObjectName, Float, Int, default

from ..manager import PersistentKernelManagerMixin
from ..multikernelmanager import PersistentMultiKernelManagerMixin, RestoreReport

OWNER_LABEL = "owner"


class OrchestratorServerKernelManager(PersistentKernelManagerMixin, ServerKernelManager):
    """jupyter_server's per-kernel manager, persisted and re-attachable."""

    async def start_kernel(self, *args: t.Any, **kwargs: t.Any) -> None:  # type: ignore[override]
        try:
            await super().start_kernel(*args, **kwargs)
        except BaseException:
            await self._cleanup_failed_start()
            raise

    reattach = PersistentKernelManagerMixin._async_reattach
    discard = PersistentKernelManagerMixin._async_discard

    @property
    def owner(self) -> str:
        return str(self.labels.get(OWNER_LABEL, ""))


class OrchestratorMappingKernelManager(
    PersistentMultiKernelManagerMixin, AsyncMappingKernelManager
):
    """The gateway's kernel manager."""

    kernel_manager_class = DottedObjectName(
        "orchestrator.gateway.kernelmanager.OrchestratorServerKernelManager", config=True
    )
    activity_save_interval = Float(
        30.0, config=True, help="Seconds between saves of kernels' last activity to the store."
    )
    max_kernels = Int(
        0, config=True, help="Most kernels in total, starting ones included (0: no limit)."
    )
    max_kernels_per_user = Int(0, config=True, help="Most kernels per user (0: no limit).")

    @default("kernel_manager_class")
    def _default_kernel_manager_class(self) -> str:
        return "orchestrator.gateway.kernelmanager.OrchestratorServerKernelManager"

    def __init__(self, **kwargs: t.Any) -> None:
        super().__init__(**kwargs)
        self._starting_owners: dict[str, str] = {}
        self._activity_task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------- ownership
    def owner_of(self, kernel_id: str) -> str:
        km = self._kernels.get(kernel_id)
        if km is not None:
            return str(getattr(km, "owner", ""))
        return self._starting_owners.get(kernel_id, "")

    def kernels_of(self, owner: str | None) -> list[str]:
        ids = list(self._kernels) + [k for k in self._starting_owners if k not in self._kernels]
        return [k for k in ids if owner is None or self.owner_of(k) == owner]

    def pre_start_kernel(self, kernel_name: str | None, kwargs: t.Any) -> t.Any:
        owner = kwargs.pop("owner", "")
        km, name, kernel_id = super().pre_start_kernel(kernel_name, kwargs)
        if owner:
            km.labels = {**km.labels, OWNER_LABEL: owner}  # type: ignore[attr-defined]
        return km, name, kernel_id

    async def start_kernel_for(self, owner: str, **kwargs: t.Any) -> str:
        """Start a kernel owned by ``owner``, counted against the limits while starting."""
        from ..errors import OrchestratorError

        if self.max_kernels and len(self.kernels_of(None)) >= self.max_kernels:
            raise OrchestratorError(f"the gateway runs its maximum of {self.max_kernels} kernels")
        if self.max_kernels_per_user and len(self.kernels_of(owner)) >= self.max_kernels_per_user:
            raise OrchestratorError(
                f"user {owner!r} already has the maximum of {self.max_kernels_per_user} kernels"
            )
        placeholder = f"starting-{id(kwargs)}"
        self._starting_owners[placeholder] = owner
        try:
            return await self.start_kernel(owner=owner, **kwargs)
        finally:
            self._starting_owners.pop(placeholder, None)

    # --------------------------------------------------------------- restore
    async def _async_restore_kernels(self) -> RestoreReport:
        report = await super()._async_restore_kernels()
        assert self.kernel_store is not None
        records = {r.kernel_id: r for r in await self.kernel_store.list()}
        for kernel_id in report.reattached:
            km = self._kernels[kernel_id]
            self._kernel_connections[kernel_id] = 0
            km.execution_state = "idle"
            km.reason = ""
            await self._finish_kernel_start(kernel_id)
            record = records.get(kernel_id)
            stamp = record.last_activity if record else None
            # after _finish_kernel_start, which stamps "now": keep the saved activity
            km.last_activity = (
                dt.datetime.fromtimestamp(stamp, tz=dt.timezone.utc)
                if stamp
                else dt.datetime.now(dt.timezone.utc)
            )
        if report.reattached and not self._initialized_culler:
            self.initialize_culler()
        self._ensure_activity_saver()
        return report

    def _ensure_activity_saver(self) -> None:
        if self._activity_task is None:
            self._activity_task = asyncio.ensure_future(self._save_activity_forever())

    async def _save_activity_forever(self) -> None:
        """Keep the store's last activity current, so culling survives a restart."""
        while True:
            await asyncio.sleep(self.activity_save_interval)
            await self.save_activity()

    async def save_activity(self) -> None:
        if self.kernel_store is None:
            return
        for kernel_id, km in list(self._kernels.items()):
            stamp = getattr(km, "last_activity", None)
            if stamp is not None:
                await self.kernel_store.touch(kernel_id, stamp.timestamp())

    async def _async_start_kernel(
        self,
        *,
        kernel_id: str | None = None,
        path: t.Any = None,  # type: ignore[override]
        **kwargs: t.Any,
    ) -> str:
        self._ensure_activity_saver()
        await self.restored()
        return await AsyncMappingKernelManager._async_start_kernel(
            self, kernel_id=kernel_id, path=path, **kwargs
        )

    start_kernel = _async_start_kernel  # type: ignore[assignment]

    async def restored(self) -> RestoreReport | None:
        if not self.restore_on_start:
            return None
        if self._restore_task is None:
            self._restore_task = asyncio.ensure_future(self._async_restore_kernels())
        return await self._restore_task

    def detach_all(self) -> None:
        for kernel_id in list(self._kernels):
            self.stop_watching_activity(kernel_id)
            self._kernels.pop(kernel_id).detach()
