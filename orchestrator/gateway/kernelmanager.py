"""Jupyter Server's kernel managers with our persistence, re-attach and ownership.

``OrchestratorMappingKernelManager`` is jupyter_server's ``AsyncMappingKernelManager``
(REST models, activity tracking, culling, metrics) whose kernels are our persisted,
re-attachable managers. At start-up it restores every saved kernel and gives each the
server's bookkeeping (activity watching, "dead" callback) with its last activity
taken from the store, so culling keeps working across restarts of the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import typing as t

from jupyter_server.services.kernels.kernelmanager import (
    AsyncMappingKernelManager,
    ServerKernelManager,
    emit_kernel_action_event,
)
from traitlets import Dict, DottedObjectName, Float, Int, Type, default

from ..manager import PersistentKernelManagerMixin
from ..multikernelmanager import PersistentMultiKernelManagerMixin, RestoreReport

OWNER_LABEL = "owner"
POOL_LABEL = "pool"


class OrchestratorServerKernelManager(PersistentKernelManagerMixin, ServerKernelManager):
    """jupyter_server's per-kernel manager, persisted and re-attachable.

    Its lifecycle methods are our mixin's (ownership checks, restart counts, records)
    wrapped in jupyter_server's own event emitter, as ``ServerKernelManager`` wraps
    jupyter_client's. Its kernels outlive the gateway process: stopping the gateway
    detaches them for the next one.
    """

    @default("outlive_process")
    def _default_outlive_process(self) -> bool:
        return True

    restarter_class = Type(  # type: ignore[assignment]
        "orchestrator.restarter.AsyncOwnerRestarter",
        klass="jupyter_client.ioloop.AsyncIOLoopKernelRestarter",
        config=True,
        help="The auto-restarter; ours restarts only kernels this process still owns.",
    )

    start_kernel = emit_kernel_action_event(success_msg="Kernel {kernel_id} was started.")(
        PersistentKernelManagerMixin._async_start_kernel
    )
    shutdown_kernel = emit_kernel_action_event(success_msg="Kernel {kernel_id} was shutdown.")(
        PersistentKernelManagerMixin._async_shutdown_kernel
    )
    restart_kernel = emit_kernel_action_event(success_msg="Kernel {kernel_id} was restarted.")(
        PersistentKernelManagerMixin._async_restart_kernel
    )
    interrupt_kernel = emit_kernel_action_event(success_msg="Kernel {kernel_id} was interrupted.")(
        PersistentKernelManagerMixin._async_interrupt_kernel
    )
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
        "orchestrator.gateway.kernelmanager.OrchestratorServerKernelManager",
        config=True,
        help="The per-kernel manager class (must be one of kernel-orchestrator's).",
    )
    activity_save_interval = Float(
        30.0, config=True, help="Seconds between saves of kernels' last activity to the store."
    )
    max_kernels = Int(
        0, config=True, help="Most kernels in total, starting ones included (0: no limit)."
    )
    warm_pools = Dict(
        config=True,
        help="kernelspec name -> number of kernels kept started and ready; a start request"
        " for that kernelspec (without its own environment) is served from the pool.",
    )
    max_kernels_per_user = Int(0, config=True, help="Most kernels per user (0: no limit).")

    @default("kernel_manager_class")
    def _default_kernel_manager_class(self) -> str:
        return "orchestrator.gateway.kernelmanager.OrchestratorServerKernelManager"

    def __init__(self, **kwargs: t.Any) -> None:
        super().__init__(**kwargs)
        self._starting_owners: dict[str, str] = {}
        self._activity_task: asyncio.Task[None] | None = None
        self._pools: dict[str, list[str]] = {}
        self._background: set[asyncio.Future[None]] = set()
        self._refilling: dict[str, int] = {}
        #: What a kernel gets of the gateway's environment (set by the app).
        self.base_environment: dict[str, str] = {}
        #: Other tenants' processes can reach this machine's loopback (set by the app).
        self.shared_loopback = False
        #: Several users share this gateway (set by the app).
        self.multi_tenant = False
        from .metrics import register

        register(self)

    def _create_kernel_manager_factory(self) -> t.Callable[..., t.Any]:
        make = super()._create_kernel_manager_factory()

        def create_kernel_manager(*args: t.Any, **kwargs: t.Any) -> t.Any:
            # Started or restored alike: the gateway's tenancy facts reach every kernel.
            km = make(*args, **kwargs)
            km.multi_tenant = km.multi_tenant or self.multi_tenant
            km.shared_loopback = km.shared_loopback or self.shared_loopback
            return km

        return create_kernel_manager

    def kernel_model(self, kernel_id: str) -> dict[str, t.Any]:
        """jupyter_server's model, plus what the provisioner reports (a batch job's state
        and queue reason, its time left) under ``provisioner``."""
        model = dict(super().kernel_model(kernel_id))
        provisioner = getattr(self._kernels.get(kernel_id), "provisioner", None)
        fields = getattr(provisioner, "status_fields", None)
        if fields is not None:
            extra = fields()
            if extra:
                model["provisioner"] = extra
        return model

    # ------------------------------------------------------------- ownership
    def owner_of(self, kernel_id: str) -> str:
        km = self._kernels.get(kernel_id)
        if km is not None:
            return str(getattr(km, "owner", ""))
        return self._starting_owners.get(kernel_id, "")

    def kernels_of(self, owner: str | None) -> list[str]:
        """Kernels of ``owner`` (None: everyone's), starting ones included, pooled excluded."""
        pooled = {k for ids in self._pools.values() for k in ids}
        ids = list(self._kernels) + [k for k in self._starting_owners if k not in self._kernels]
        return [k for k in ids if k not in pooled and (owner is None or self.owner_of(k) == owner)]

    def pre_start_kernel(self, kernel_name: str | None, kwargs: t.Any) -> t.Any:
        owner = kwargs.pop("owner", "")
        km, name, kernel_id = super().pre_start_kernel(kernel_name, kwargs)
        if owner:
            km.labels = {**km.labels, OWNER_LABEL: owner}  # type: ignore[attr-defined]
        return km, name, kernel_id

    async def start_kernel_for(self, owner: str, **kwargs: t.Any) -> str:
        """Start a kernel owned by ``owner``: from a warm pool when possible, else cold."""
        import time

        from .metrics import START_FAILURES, START_SECONDS, failure_reason

        started = time.monotonic()
        try:
            kernel_id, source = await self._start_kernel_for(owner, **kwargs)
        except Exception as e:
            START_FAILURES.labels(reason=failure_reason(e)).inc()
            raise
        km = self._kernels.get(kernel_id)
        START_SECONDS.labels(
            provisioner=getattr(km, "_provisioner_name", "") or "unknown", source=source
        ).observe(time.monotonic() - started)
        return kernel_id

    async def _start_kernel_for(self, owner: str, **kwargs: t.Any) -> tuple[str, str]:
        from ..errors import KernelLimitError

        # Kernels still being restored count too: wait for them before any limit check
        # (the checks below and the placeholder run without a pause in between).
        await self.restored()
        if self.max_kernels and len(self.kernels_of(None)) >= self.max_kernels:
            raise KernelLimitError(f"the gateway runs its maximum of {self.max_kernels} kernels")
        if self.max_kernels_per_user and len(self.kernels_of(owner)) >= self.max_kernels_per_user:
            raise KernelLimitError(
                f"user {owner!r} already has the maximum of {self.max_kernels_per_user} kernels"
            )
        pooled = self._take_from_pool(kwargs.get("kernel_name") or "", kwargs.get("env"))
        if pooled is not None:
            km = self._kernels[pooled]
            km.labels = {OWNER_LABEL: owner}
            await km.save_record()
            self.log.info(
                "kernel %s handed out from the %s pool to %s", pooled, km.kernel_name, owner
            )
            return pooled, "pool"
        placeholder = f"starting-{id(kwargs)}"
        self._starting_owners[placeholder] = owner
        try:
            return await self.start_kernel(owner=owner, **kwargs), "cold"
        finally:
            self._starting_owners.pop(placeholder, None)

    # ------------------------------------------------------------ warm pools
    def _take_from_pool(self, kernel_name: str, env: t.Any) -> str | None:
        """A ready pooled kernel for ``kernel_name``, removed from its pool (or None).

        Only requests without an environment of their own qualify: a pooled kernel was
        started before the request. Taking is synchronous, so no two requests can get
        the same kernel.
        """
        extra = {k for k, v in (env or {}).items() if self.base_environment.get(k) != v}
        if extra - {"KERNEL_USERNAME"}:
            return None
        pool = self._pools.get(kernel_name) or []
        while pool:
            kernel_id = pool.pop(0)
            if kernel_id in self._kernels:
                self._schedule_refill(kernel_name)
                return kernel_id
        self._schedule_refill(kernel_name)
        return None

    def _schedule_refill(self, kernel_name: str) -> None:
        if kernel_name in self.warm_pools:
            task = asyncio.ensure_future(self._refill(kernel_name))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _refill(self, kernel_name: str) -> None:
        """Start pooled kernels until the pool holds its configured size."""
        want = int(self.warm_pools.get(kernel_name, 0))
        if want and self._depends_on_user(kernel_name):
            self.log.warning(
                "warm pool %s: not filled, the kernelspec's configuration depends on the"
                " user ({username}); its kernels are started per request",
                kernel_name,
            )
            return
        pool = self._pools.setdefault(kernel_name, [])
        while len(pool) + self._refilling.get(kernel_name, 0) < want:
            self._refilling[kernel_name] = self._refilling.get(kernel_name, 0) + 1
            try:
                kernel_id = await self.start_kernel(
                    kernel_name=kernel_name, owner="", env=dict(self.base_environment)
                )
                km = self._kernels[kernel_id]
                km.labels = {POOL_LABEL: kernel_name}
                await km.save_record()
                pool.append(kernel_id)
            except Exception as e:
                self.log.warning("warm pool %s: could not start a kernel: %s", kernel_name, e)
                return
            finally:
                self._refilling[kernel_name] -= 1

    def _depends_on_user(self, kernel_name: str) -> bool:
        """Whether kernels of ``kernel_name`` differ by user (a pooled one would not)."""
        import json

        try:
            spec = self.kernel_spec_manager.get_kernel_spec(kernel_name)
        except Exception:
            return False
        return "{username}" in json.dumps(spec.to_dict())

    async def fill_pools(self) -> None:
        await asyncio.gather(*(self._refill(name) for name in self.warm_pools))

    def pool_size(self, kernel_name: str) -> int:
        return len(self._pools.get(kernel_name, []))

    async def cull_kernel_if_idle(self, kernel_id: str) -> None:
        if any(kernel_id in ids for ids in self._pools.values()):
            return  # pooled kernels are idle by design
        await super().cull_kernel_if_idle(kernel_id)

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
            # _finish_kernel_start stamps "now", and the iopub status messages of our
            # re-attach check may still arrive: put the saved activity back once they
            # have, unless a client connected meanwhile.
            saved = (
                dt.datetime.fromtimestamp(stamp, tz=dt.timezone.utc)
                if stamp
                else dt.datetime.now(dt.timezone.utc)
            )
            km.last_activity = saved
            asyncio.get_running_loop().call_later(1.0, self._restore_activity, kernel_id, saved)
            pool = (km.labels or {}).get(POOL_LABEL)
            if pool and not (km.labels or {}).get(OWNER_LABEL):
                self._pools.setdefault(pool, []).append(kernel_id)
        if report.reattached and not self._initialized_culler:
            self.initialize_culler()
        self._ensure_activity_saver()
        return report

    def _restore_activity(self, kernel_id: str, saved: dt.datetime) -> None:
        km = self._kernels.get(kernel_id)
        if km is not None and not self._kernel_connections.get(kernel_id):
            km.last_activity = saved

    def _ensure_activity_saver(self) -> None:
        if self._activity_task is None:
            self._activity_task = asyncio.ensure_future(self._save_activity_forever())

    async def _save_activity_forever(self) -> None:
        """Keep the store's last activity current, so culling survives a restart.

        A store error (locked, full, unreachable) skips one round: it must not end
        the saver, or culling after the next restart would silently stop working.
        """
        while True:
            await asyncio.sleep(self.activity_save_interval)
            try:
                await self.save_activity()
            except Exception as e:
                self.log.warning("could not save kernel activity (will retry): %s", e)

    async def _async_shutdown_kernel(  # type: ignore[override]
        self, kernel_id: str, now: bool = False, restart: bool = False
    ) -> None:
        """Shut a kernel down; one still starting (a batch job waiting in the queue, with
        pending kernels on) is cancelled, which removes what its start made (the job),
        instead of being awaited to the end of its start as jupyter_client does."""
        starting = self._pending_kernels.get(kernel_id)
        km = self._kernels.get(kernel_id)
        if (
            not restart
            and starting is not None
            and not starting.done()
            and km is not None
            and not km.ready.done()
        ):
            self.log.info("Kernel shutdown while starting: %s (start cancelled)", kernel_id)
            starting.cancel()
            with contextlib.suppress(BaseException):
                await starting
            self.stop_watching_activity(kernel_id)
            self.stop_buffering(kernel_id)
            self._pending_kernels.pop(kernel_id, None)
            self._kernels.pop(kernel_id, None)
            with contextlib.suppress(Exception):
                from jupyter_server.prometheus.metrics import KERNEL_CURRENTLY_RUNNING_TOTAL

                KERNEL_CURRENTLY_RUNNING_TOTAL.labels(type=km.kernel_name).dec()
            return
        await super()._async_shutdown_kernel(kernel_id, now=now, restart=restart)

    shutdown_kernel = _async_shutdown_kernel  # type: ignore[assignment]

    def _forget_kernel(self, kernel_id: str) -> None:
        """Drop a kernel another process now owns: no activity watch, no pool slot."""
        self.stop_watching_activity(kernel_id)
        self._kernel_connections.pop(kernel_id, None)
        for pool in self._pools.values():
            if kernel_id in pool:
                pool.remove(kernel_id)
        super()._forget_kernel(kernel_id)

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

    def detach_all(self) -> None:
        for kernel_id in list(self._kernels):
            self.stop_watching_activity(kernel_id)
            self._kernels.pop(kernel_id).detach()
