"""Jupyter Server's kernel managers with our persistence, re-attach and ownership.

``OrchestratorMappingKernelManager`` is jupyter_server's ``AsyncMappingKernelManager``
(REST models, activity tracking, culling, metrics) whose kernels are our persisted,
re-attachable managers. At start-up it restores the saved kernels and gives each the
server's bookkeeping (activity watching, "dead" callback) with its last activity
taken from the store, so culling keeps working across restarts of the service.

Several gateway replicas can share one store (PostgreSQL), behind a load balancer
that sends any request to any replica:

* A replica serves every kernel of the store. A request or WebSocket for a kernel it
  does not have attaches to it from the store as a client (executing needs no
  ownership), so nobody ever gets a 404 for a kernel that exists.
* Each kernel has one owner, the holder of its lease, which alone does lifecycle work
  on its own: auto-restart and culling. Every replica saves the activity it sees to
  the store, and the owner culls on the store's latest activity.
* A lifecycle request (restart, interrupt, shutdown) that reaches a replica which does
  not own the kernel takes the lease over from the owning replica first (the
  generation fences the previous owner, which carries on as a client).
* A replica that dies stops renewing its leases; every replica looks at the owners of
  all kernels once per lease (the lease keeper's one read, without payloads) and takes
  over kernels whose lease has expired, reading the records of those only.
* Listings and readiness are served from a cache of the records that the store's
  change count invalidates: while nothing changes, a listing costs one tiny read.
* Limits and warm pools are counted in the store, atomically, across replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import time
import typing as t
import uuid
import weakref

from jupyter_server.services.kernels.kernelmanager import (
    AsyncMappingKernelManager,
    ServerKernelManager,
    emit_kernel_action_event,
)
from traitlets import Dict, DottedObjectName, Float, Int, Type, default, validate

from .. import fdlimit, ownership
from ..errors import FencedError, KernelLimitError, OrchestratorError, OwnedElsewhereError
from ..manager import PersistentKernelManagerMixin
from ..multikernelmanager import PersistentMultiKernelManagerMixin, RestoreReport
from ..store import KernelRecord, Limits
from ..store.lease import Holder, Ownership
from ..store.record import POOL_LABEL, TENANT_LABEL
from ..tenure import LeaseState
from ..users import ADMIN, entitled
from .offline import BoundedOfflineBuffers
from .tenancy import SERVER_LABEL, model_fields

OWNER_LABEL = TENANT_LABEL


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

    #: Messages each of its IOPub sockets queues while the gateway falls behind (zmq's
    #: RCVHWM; 0: zmq's default of 1,000). Set by the gateway (kernel_receive_queue).
    iopub_receive_queue = 0

    def _create_connected_socket(self, channel: str, identity: bytes | None = None) -> t.Any:
        sock = super()._create_connected_socket(channel, identity)
        if channel == "iopub" and self.iopub_receive_queue > 0:
            # A queue's bound is fixed when its connection is made: connect again with
            # it (nothing has arrived yet; the subscription is set after this).
            url = self._make_url(channel)
            sock.rcvhwm = self.iopub_receive_queue
            sock.disconnect(url)
            sock.connect(url)
        return sock

    @property
    def owner(self) -> str:
        return str(self.labels.get(OWNER_LABEL, ""))

    @property
    def pooled(self) -> bool:
        """An unclaimed kernel of a warm pool."""
        return bool(self.labels.get(POOL_LABEL)) and not self.owner

    async def follow(self, record: KernelRecord) -> None:
        """Catch up with a restart another replica did (the owner has nothing to
        catch up with: it did every restart)."""
        if not self.is_owner:
            await self.follow_record(record)

    async def take_over(self) -> None:
        """Own the kernel before lifecycle work asked of this replica.

        If another gateway replica owns it, the lease is taken over (its generation
        fences that replica, which carries on serving the kernel's clients); a kernel
        that a CLI or library process owns is left to it (:class:`OwnedElsewhereError`).
        """
        if self.kernel_store is None:
            return
        if self.lease_state is LeaseState.OWNER:
            try:
                await self._ensure_owner()  # against the store: our lease may be stale
                return
            except FencedError:
                pass  # another replica took it over since: take it back, as for any
        self.unfence()
        try:
            await self.claim_ownership()
        except OwnedElsewhereError as e:
            owner = e.owner
            if not (isinstance(owner, Holder) and owner.kind == "gateway"):
                raise
            self.log.info(
                "kernel %s: taking it over from %s for a request", self.kernel_id, owner.describe()
            )
            await self.claim_ownership(force=True)
        if self.has_kernel:
            self.start_restarter()


class OrchestratorMappingKernelManager(
    BoundedOfflineBuffers, PersistentMultiKernelManagerMixin, AsyncMappingKernelManager
):
    """The gateway's kernel manager (see the module docstring for replicas)."""

    kernel_manager_class = DottedObjectName(
        "orchestrator.gateway.kernelmanager.OrchestratorServerKernelManager",
        config=True,
        help="The per-kernel manager class (must be one of kernel-orchestrator's).",
    )
    activity_save_interval = Float(
        30.0, config=True, help="Seconds between saves of kernels' last activity to the store."
    )
    max_kernels = Int(
        0,
        config=True,
        help="Most kernels in total, starting ones included, across every replica sharing"
        " the store (0: no limit).",
    )
    warm_pools = Dict(
        config=True,
        help="kernelspec name -> number of kernels kept started and ready (across every"
        " replica sharing the store); a start request for that kernelspec (without its"
        " own environment) is served from the pool.",
    )
    max_kernels_per_user = Int(
        10,
        config=True,
        help="Most kernels per user, across replicas (0: no limit). The operator's own"
        " token is held only to max_kernels.",
    )
    max_kernels_for = Dict(
        value_trait=Int(),
        config=True,
        help="Per-user caps for some users: user name, @group or JupyterHub custom: scope"
        " -> most kernels (0: no limit); a user named by several gets the largest.",
    )
    max_kernels_per_server = Int(
        0,
        config=True,
        help="With JupyterHub: most kernels one Hub server (a user's default or named"
        " server) may have (0: no limit besides the user's).",
    )
    reservation_seconds = Float(
        900.0,
        config=True,
        help="How long a start under way holds its slot against the limits before its"
        " kernel is recorded (a replica that dies mid-start frees it after that).",
    )

    @validate("warm_pools")
    def _canonical_pool_names(self, proposal: t.Any) -> dict[str, t.Any]:
        from .kernelspecs import canonical_keys

        return canonical_keys(proposal["value"], "OrchestratorMappingKernelManager.warm_pools")

    @default("kernel_manager_class")
    def _default_kernel_manager_class(self) -> str:
        return "orchestrator.gateway.kernelmanager.OrchestratorServerKernelManager"

    def __init__(self, **kwargs: t.Any) -> None:
        super().__init__(**kwargs)
        # Every kernel's sockets live in this manager's context, made here, before any
        # socket: libzmq's default of 1,023 would stop the gateway near 1,000 kernels.
        if raised := fdlimit.raise_zmq_socket_limit(self.context):
            self.log.info("zmq sockets of kernels: limit raised from %d to %d", *raised)
        self._activity_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[t.Any]] = set()
        self._refilling: set[str] = set()
        self._attaching: dict[str, asyncio.Future[None]] = {}
        # Kernels an attach failed for, with the (generation, owner) it saw then.
        self._unreachable: dict[str, tuple[int, str]] = {}
        # The records as of the store's change count (listings and readiness).
        self._listing: tuple[int, list[KernelRecord]] | None = None
        self._adopting: asyncio.Future[None] | None = None
        self._lifecycle_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = (
            weakref.WeakValueDictionary()
        )
        # The last activity saved per kernel, so an idle kernel costs no write.
        self._saved_activity: dict[str, float] = {}
        #: What a kernel gets of the gateway's environment (set by the app).
        self.base_environment: dict[str, str] = {}
        #: Other tenants' processes can reach this machine's loopback (set by the app).
        self.shared_loopback = False
        #: Several users share this gateway (set by the app).
        self.multi_tenant = False
        #: Messages a kernel's IOPub socket queues while we fall behind (set by the app).
        self.iopub_receive_queue = 0
        from .metrics import register

        register(self)

    def _create_kernel_manager_factory(self) -> t.Callable[..., t.Any]:
        make = super()._create_kernel_manager_factory()

        def create_kernel_manager(*args: t.Any, **kwargs: t.Any) -> t.Any:
            # Started or restored alike: the gateway's tenancy facts reach every kernel.
            km = make(*args, **kwargs)
            km.multi_tenant = km.multi_tenant or self.multi_tenant
            km.shared_loopback = km.shared_loopback or self.shared_loopback
            km.iopub_receive_queue = self.iopub_receive_queue
            km.on_endpoint_changed(functools.partial(self._kernel_moved, km))
            return km

        return create_kernel_manager

    def lifecycle_lock(self, kernel_id: str) -> asyncio.Lock:
        """The lock lifecycle requests on ``kernel_id`` take turns with (one per kernel
        while anyone holds or waits for it)."""
        lock = self._lifecycle_locks.get(kernel_id)
        if lock is None:
            lock = self._lifecycle_locks[kernel_id] = asyncio.Lock()
        return lock

    def _kernel_moved(self, km: t.Any) -> None:
        """A restart moved ``km``'s kernel (a new pod address): every websocket on it gets
        new streams, the activity watch moves, and a client restoring a buffered session
        gets new streams instead of the buffer's dead ones."""
        from .channels import RestartProofWebsocketConnection

        kernel_id = str(km.kernel_id)
        if self._kernels.get(kernel_id) is not km:
            return
        self.stop_buffering(kernel_id)
        if kernel_id in self._kernel_ports:
            self._kernel_ports[kernel_id] = []  # ports_changed(): make new streams
        if getattr(km, "_activity_stream", None) is not None:
            self.stop_watching_activity(kernel_id)
            self.start_watching_activity(kernel_id)
        RestartProofWebsocketConnection.kernel_moved(kernel_id)

    async def catch_up(self, kernel_id: str) -> None:
        """Follow a restart another process did, now (a websocket on the kernel lost it)."""
        km = self._kernels.get(kernel_id)
        if km is None or km.is_owner or self.kernel_store is None:
            return
        follow = km.follow
        try:
            record = await self.kernel_store.get(kernel_id)
        except Exception as e:
            self.log.debug("kernel %s: cannot read its record to catch up: %s", kernel_id, e)
            return
        if record is not None and self._kernels.get(kernel_id) is km:
            await follow(record)

    def _spawn(self, coro: t.Coroutine[t.Any, t.Any, t.Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def kernel_model(self, kernel_id: str) -> dict[str, t.Any]:
        """jupyter_server's model, plus ``encryption`` and what the provisioner reports (a
        batch job's state and queue reason, its time left) under ``provisioner``."""
        model = dict(super().kernel_model(kernel_id))
        km = self._kernels.get(kernel_id)
        model.update(model_fields(getattr(km, "labels", {})))
        provisioner = getattr(km, "provisioner", None)
        if km is not None:
            # What protects its traffic: "curve" (the kernel's own), "relay" (a Curve
            # relay beside a kernel that cannot encrypt) or "plain".
            model["encryption"] = getattr(provisioner, "encryption", None) or (
                "curve" if getattr(km, "curve_secretkey", None) else "plain"
            )
        fields = getattr(provisioner, "status_fields", None)
        if fields is not None:
            extra = fields()
            if extra:
                model["provisioner"] = extra
        return model

    @staticmethod
    def record_model(record: KernelRecord) -> dict[str, t.Any]:
        """The model of a kernel this replica has not attached to (another serves it)."""
        stamp = dt.datetime.fromtimestamp(record.last_activity, tz=dt.timezone.utc)
        return {
            "id": record.kernel_id,
            "name": record.kernel_name,
            "last_activity": stamp.isoformat().replace("+00:00", "Z"),
            "execution_state": "unknown",
            "connections": 0,
            **model_fields(record.labels),
        }

    async def kernel_models_of(
        self, visible: t.Callable[[t.Mapping[str, str]], bool]
    ) -> list[dict[str, t.Any]]:
        """Every kernel in the store whose labels are ``visible`` (see ``tenancy``),
        whichever replica serves it."""
        models = []
        records = await self.records()
        for record in records:
            if not visible(record.labels):
                continue
            if record.kernel_id in self._kernels:
                models.append(self.kernel_model(record.kernel_id))
            else:
                models.append(self.record_model(record))
        stored = {r.kernel_id for r in records}
        for kernel_id, km in list(self._kernels.items()):  # starting here, not saved yet
            if kernel_id not in stored and not km.is_recorded and visible(km.labels):
                models.append(self.kernel_model(kernel_id))
        return models

    async def records(self) -> list[KernelRecord]:
        """Every record in the store, from a cache that the store's change count
        invalidates (one tiny read while nothing changed). Read-only: shared."""
        assert self.kernel_store is not None
        seen = self._listing[0] if self._listing is not None else None
        count, records = await self.kernel_store.list_if_changed(seen)
        if records is not None or self._listing is None:
            self._listing = (count, records or [])
        return self._listing[1]

    # ------------------------------------------------------------- ownership
    def owner_of(self, kernel_id: str) -> str:
        km = self._kernels.get(kernel_id)
        return str(getattr(km, "owner", "")) if km is not None else ""

    def kernels_of(self, owner: str | None) -> list[str]:
        """Kernels of ``owner`` this replica has (None: everyone's), pooled excluded."""
        return [
            k
            for k, km in self._kernels.items()
            if not km.pooled and (owner is None or km.owner == owner)
        ]

    async def serve_kernel(
        self, kernel_id: str, may_use: t.Callable[[KernelRecord], bool] = lambda _: True
    ) -> bool:
        """Have ``kernel_id`` served here, if the store has it and ``may_use`` its record.

        The store is the truth, not this replica's memory: a kernel another replica
        started is attached to (as a client, or as owner if nobody holds its lease); one
        another replica shut down is dropped here; labels another replica changed (a
        pooled kernel handed to a user) are taken over. False: no such kernel (or not
        the caller's). Raises :class:`OrchestratorError` saying why a kernel that exists
        cannot be reached from here (or why the store cannot be read).
        """
        assert self.kernel_store is not None
        record = await self.kernel_store.get(kernel_id)
        km = self._kernels.get(kernel_id)
        if record is None and km is not None and not km.is_recorded:
            # Starting here and not saved yet: this replica's own view is the truth.
            return may_use(KernelRecord(kernel_id, km.kernel_name, "", labels=dict(km.labels)))
        if record is None:
            if km is not None:
                self.log.info("kernel %s was shut down elsewhere; dropping it", kernel_id)
                self._forget_kernel(kernel_id)
                km.release()
            return False
        if km is not None and km.labels != record.labels:
            km.labels = dict(record.labels)
        if not may_use(record):
            return False
        if km is not None:
            await km.follow(record)
            return True
        report = RestoreReport()
        await self._restore_one(record, report)
        if kernel_id in self._kernels:
            return True
        if kernel_id in report.removed:
            return False
        raise OrchestratorError(
            report.failed.get(kernel_id) or f"kernel {kernel_id} is unreachable"
        )

    def _ownership_lost(self, km: t.Any, reason: str) -> None:
        """Another replica owns ``km``'s kernel now: keep serving its clients from here
        as a client (unless the kernel is gone)."""
        kernel_id = str(km.kernel_id)
        if self._kernels.get(kernel_id) is not km:
            km.release()
            return
        self._spawn(self._demote(km, reason))

    async def _demote(self, km: t.Any, reason: str) -> None:
        kernel_id = str(km.kernel_id)
        assert self.kernel_store is not None
        try:
            record = await self.kernel_store.get(kernel_id)
        except Exception as e:  # the store is down: keep serving it, as a client
            self.log.warning("kernel %s: %s; the store is unreachable: %s", kernel_id, reason, e)
            record = KernelRecord(kernel_id, km.kernel_name, "", labels=dict(km.labels))
        if record is None:
            self.log.info("kernel %s was shut down by another process; dropping it", kernel_id)
            if self._kernels.get(kernel_id) is km:
                self._forget_kernel(kernel_id)
            km.release()
            return
        km.labels = dict(record.labels)
        km.serve_as_client()  # (and a lifecycle request here may take it over again)
        self.log.info("kernel %s: %s; serving it as a client", kernel_id, reason)

    # ------------------------------------------------------------- starting
    def pre_start_kernel(self, kernel_name: str | None, kwargs: t.Any) -> t.Any:
        owner = kwargs.pop("owner", "")
        pool = kwargs.pop("pool", "")
        extra = kwargs.pop("labels", None) or {}
        km, name, kernel_id = super().pre_start_kernel(kernel_name, kwargs)
        labels = {OWNER_LABEL: owner, **extra} if owner else {POOL_LABEL: pool} if pool else {}
        if labels:
            km.labels = {**km.labels, **labels}  # type: ignore[attr-defined]
        return km, name, kernel_id

    @property
    def limits(self) -> Limits:
        return Limits(total=self.max_kernels, per_tenant=self.max_kernels_per_user)

    def limits_for(self, owner: str, held: t.Iterable[str] = ()) -> Limits:
        """The limits a start for ``owner`` (holding the ``held`` memberships: ``@group``,
        ``custom:`` scope) counts against: the operator's kernels (and a pool's) only
        against the total; a user's cap is the largest of ``max_kernels_for`` that
        names them, else ``max_kernels_per_user``."""
        if owner in ("", ADMIN):
            return Limits(total=self.max_kernels)
        caps = [n for who, n in self.max_kernels_for.items() if entitled([who], owner, held)]
        per_user = max(caps) if caps else self.max_kernels_per_user
        if 0 in caps:
            per_user = 0  # (no limit)
        return Limits(total=self.max_kernels, per_tenant=per_user)

    async def _check_server_cap(self, owner: str, labels: t.Mapping[str, str]) -> None:
        """``max_kernels_per_server`` for a Hub server's start (counted in the records:
        replicas starting for one server at the same moment may pass it together)."""
        if not self.max_kernels_per_server or SERVER_LABEL not in labels:
            return
        server = labels[SERVER_LABEL]
        held = sum(
            1
            for r in await self.records()
            if r.labels.get(OWNER_LABEL) == owner and r.labels.get(SERVER_LABEL) == server
        )
        if held >= self.max_kernels_per_server:
            raise KernelLimitError(
                f"server {server or '(default)'!r} of {owner!r} already has the maximum of"
                f" {self.max_kernels_per_server} kernels"
                " (OrchestratorMappingKernelManager.max_kernels_per_server)"
            )

    async def start_kernel_for(self, owner: str, **kwargs: t.Any) -> str:
        """Start a kernel owned by ``owner``: from a warm pool when possible, else cold.
        ``labels`` go on the kernel (its Hub server); ``memberships`` pick its cap."""
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
        assert self.kernel_store is not None
        await self.restored()
        fdlimit.refuse_start_when_short()
        labels = dict(kwargs.get("labels") or {})
        limits = self.limits_for(owner, kwargs.pop("memberships", ()))
        await self._check_server_cap(owner, labels)
        pooled = await self._take_from_pool(
            kwargs.get("kernel_name") or "", kwargs.get("env"), owner, labels, limits
        )
        if pooled is not None:
            return pooled, "pool"
        kernel_id = kwargs.pop("kernel_id", None) or str(uuid.uuid4())
        # The slot is taken in the store, atomically, before anything starts: replicas
        # starting kernels at the same moment cannot exceed a limit together.
        await self.kernel_store.reserve(
            kernel_id,
            tenant=owner or None,
            pool=None,
            limits=limits,
            seconds=self.reservation_seconds,
        )
        try:
            return await self.start_kernel(kernel_id=kernel_id, owner=owner, **kwargs), "cold"
        finally:
            with contextlib.suppress(Exception):  # the record, once inserted, ended it
                await self.kernel_store.unreserve(kernel_id)

    # ------------------------------------------------------------ warm pools
    async def _take_from_pool(
        self,
        kernel_name: str,
        env: t.Any,
        owner: str,
        labels: t.Mapping[str, str],
        limits: Limits,
    ) -> str | None:
        """A ready pooled kernel for ``kernel_name`` handed to ``owner`` (or None), with
        ``labels`` besides its owner's.

        Only requests without an environment of their own qualify: a pooled kernel was
        started before the request. The store hands each pooled kernel out once, even
        to replicas asking at the same moment; this replica then owns it.
        """
        if kernel_name not in self.warm_pools:
            return None
        extra = {k for k, v in (env or {}).items() if self.base_environment.get(k) != v}
        if extra - {"KERNEL_USERNAME", "KERNEL_USER_GROUPS"}:  # the gateway sets those
            return None
        assert self.kernel_store is not None
        self._schedule_refill(kernel_name)
        while True:
            lease = await self.kernel_store.claim_pooled(
                kernel_name,
                owner,
                ownership.this_holder(),
                self._keeper().lease_seconds,
                limits=limits,
            )
            if lease is None:
                return None
            kernel_id = lease.kernel_id
            km = self._kernels.get(kernel_id)
            try:
                if km is None:
                    if not await self.serve_kernel(kernel_id):
                        continue  # it died in the pool (and is cleaned up): the next one
                    km = self._kernels[kernel_id]
                else:
                    km.hold_lease(lease)
                km.labels = {OWNER_LABEL: owner, **labels}
                await km.save_record()
            except OrchestratorError as e:
                self.log.warning("warm pool %s: kernel %s unusable: %s", kernel_name, kernel_id, e)
                continue
            self.log.info(
                "kernel %s handed out from the %s pool to %s", kernel_id, kernel_name, owner
            )
            return kernel_id

    def _keeper(self) -> ownership.LeaseKeeper:
        assert self.kernel_store is not None
        return ownership.keeper_for(self.kernel_store)

    def _schedule_refill(self, kernel_name: str) -> None:
        if kernel_name in self.warm_pools and kernel_name not in self._refilling:
            self._spawn(self._refill(kernel_name))

    async def _refill(self, kernel_name: str) -> None:
        """Start pooled kernels until the pool (counted in the store) holds its size."""
        want = int(self.warm_pools.get(kernel_name, 0))
        if not want or kernel_name in self._refilling:
            return
        if self._depends_on_user(kernel_name):
            self.log.warning(
                "warm pool %s: not filled, the kernelspec's configuration depends on the"
                " user ({username}) or the notebook (working_dir_map); its kernels are"
                " started per request",
                kernel_name,
            )
            return
        assert self.kernel_store is not None
        self._refilling.add(kernel_name)
        try:
            while True:
                kernel_id = str(uuid.uuid4())
                try:
                    await self.kernel_store.reserve(
                        kernel_id,
                        tenant=None,
                        pool=kernel_name,
                        limits=Limits(pool_size=want),
                        seconds=self.reservation_seconds,
                    )
                except OrchestratorError:
                    return  # full (or the store is down: the next hand-out tries again)
                try:
                    await self.start_kernel(
                        kernel_id=kernel_id,
                        kernel_name=kernel_name,
                        pool=kernel_name,
                        env=dict(self.base_environment),
                    )
                except Exception as e:
                    self.log.warning("warm pool %s: could not start a kernel: %s", kernel_name, e)
                    return
                finally:
                    with contextlib.suppress(Exception):
                        await self.kernel_store.unreserve(kernel_id)
        finally:
            self._refilling.discard(kernel_name)

    def _depends_on_user(self, kernel_name: str) -> bool:
        """Whether kernels of ``kernel_name`` differ by user or by request (a pooled one
        would not): ``{username}``, a ``user_map`` or a ``working_dir_map`` in the
        kernelspec, or in the traitlets config of its provisioner class
        (``KubernetesProvisioner.volumes`` in jupyter_server_config)."""
        import json

        from jupyter_client.provisioning.factory import KernelProvisionerFactory

        try:
            spec = self.kernel_spec_manager.get_kernel_spec(kernel_name)
        except Exception:
            return True  # cannot tell: not pooled, started per request
        factory = KernelProvisionerFactory.instance(parent=self.parent)
        provisioner = (spec.metadata or {}).get("kernel_provisioner") or {}
        name = provisioner.get("provisioner_name") or factory.default_provisioner_name
        sections: set[str] = set()
        entry = factory.provisioners.get(name)
        if entry is not None:
            with contextlib.suppress(Exception):
                sections = {cls.__name__ for cls in entry.load().__mro__}
        configured = {key: value for key, value in self.config.items() if key in sections}
        text = json.dumps([spec.to_dict(), configured], default=str)
        # (a working_dir_map: each start's notebook directory, which a pooled kernel,
        # started for no notebook, would not be in)
        return any(mark in text for mark in ("{username}", '"user_map"', '"working_dir_map"'))

    async def fill_pools(self) -> None:
        await asyncio.gather(*(self._refill(name) for name in self.warm_pools))

    async def pool_size(self, kernel_name: str) -> int:
        """Unclaimed kernels of a pool, across replicas."""
        assert self.kernel_store is not None
        return await self.kernel_store.count(pool=kernel_name)

    # --------------------------------------------------------------- culling
    async def cull_kernel_if_idle(self, kernel_id: str) -> None:
        """Only the owner culls, on the latest activity any replica saw."""
        km = self._kernels.get(kernel_id)
        if km is None or km.pooled or not km.is_owner:
            return  # pooled kernels are idle by design; clients leave it to the owner
        assert self.kernel_store is not None
        try:
            record = await self.kernel_store.get(kernel_id)
        except Exception as e:
            self.log.warning("kernel %s: not culled, the store is unreachable: %s", kernel_id, e)
            return
        if record is None:
            return
        stored = dt.datetime.fromtimestamp(record.last_activity, tz=dt.timezone.utc)
        if getattr(km, "last_activity", None) is None or stored > km.last_activity:
            km.last_activity = stored
        await super().cull_kernel_if_idle(kernel_id)

    # --------------------------------------------------------------- restore
    def should_restore(self, record: KernelRecord) -> bool:
        """Kernels nobody owns, or whose owner's lease expired or who provably died;
        those a live replica owns are attached when a request asks for them."""
        return self._adoptable(
            record.kernel_id,
            Ownership(Holder.from_dict(record.owner), record.lease_expires, record.generation),
        )

    def _adoptable(self, kernel_id: str, own: Ownership) -> bool:
        """Whether a kernel with owner ``own`` is this replica's to take (see above)."""
        owner = own.owner
        if self._unreachable.get(kernel_id) == (own.generation, _holder_id(owner)):
            return False  # failed before, and nothing changed since: not every scan again
        if owner is None or own.expires <= time.time():
            return True
        return owner.holder_id == ownership.this_holder().holder_id or ownership.holder_is_dead(
            owner
        )

    async def _restore_one(self, record: KernelRecord, report: RestoreReport) -> None:
        """Attach to one kernel (at most once at a time per kernel) and serve it."""
        kernel_id = record.kernel_id
        while kernel_id in self._attaching:
            await asyncio.shield(self._attaching[kernel_id])
        if kernel_id in self._kernels:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._attaching[kernel_id] = done
        try:
            await super()._restore_one(record, report)
            if kernel_id in self._kernels:
                self._unreachable.pop(kernel_id, None)
                await self._serve_restored(kernel_id, record)
            elif kernel_id in report.failed:
                owner = Holder.from_dict(record.owner)
                self._unreachable[kernel_id] = (record.generation, _holder_id(owner))
        finally:
            del self._attaching[kernel_id]
            done.set_result(None)

    async def _serve_restored(self, kernel_id: str, record: KernelRecord) -> None:
        """Jupyter Server's bookkeeping for a kernel it did not start."""
        km = self._kernels[kernel_id]
        self._kernel_connections[kernel_id] = 0
        km.execution_state = "idle"
        km.reason = ""
        await self._finish_kernel_start(kernel_id)
        stamp = record.last_activity
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
        if not self._initialized_culler:
            self.initialize_culler()

    async def _async_restore_kernels(self) -> RestoreReport:
        report = await super()._async_restore_kernels()
        self._ensure_background_work()
        return report

    def _restore_activity(self, kernel_id: str, saved: dt.datetime) -> None:
        km = self._kernels.get(kernel_id)
        if km is not None and not self._kernel_connections.get(kernel_id):
            km.last_activity = saved

    def _ensure_background_work(self) -> None:
        if self._activity_task is None:
            self._activity_task = asyncio.ensure_future(self._save_activity_forever())
        if not self._adopt_listening and self.restore_on_start:
            self._adopt_listening = True
            self._keeper().listen(self._owners_read, asyncio.get_running_loop())

    _adopt_listening = False

    def _owners_read(self, owners: dict[str, Ownership]) -> None:
        """The lease keeper read every kernel's owner: take over those whose owner is
        gone (one adoption at a time; the next read brings the next chance)."""
        if self._adopting is not None and not self._adopting.done():
            return
        self._adopting = asyncio.ensure_future(self._adopt(owners))

    async def _adopt(self, owners: dict[str, Ownership]) -> None:
        """Take over the kernels of replicas that died (their leases expired), reading
        the records of those kernels only."""
        assert self.kernel_store is not None
        report = RestoreReport()
        for kernel_id, own in owners.items():
            if kernel_id in self._kernels or not self._adoptable(kernel_id, own):
                continue
            try:
                record = await self.kernel_store.get(kernel_id)
                if record is not None and self.should_restore(record):
                    await self._restore_one(record, report)
            except Exception as e:
                self.log.warning("kernel %s: could not take it over (will retry): %s", kernel_id, e)
        for kernel_id in report.reattached:
            self.log.info("kernel %s taken over from a replica that is gone", kernel_id)

    async def _save_activity_forever(self) -> None:
        """Keep the store's last activity current, so culling survives a restart.

        A store error (locked, full, unreachable) skips one round: it must not end
        the saver, or culling after the next restart would silently stop working.
        """
        while True:
            await asyncio.sleep(self.activity_save_seconds())
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

    def _kernel_dropped(self, km: t.Any, reason: str) -> None:
        """A kernel given up: its bookkeeping goes too, even when jupyter_server's own
        "dead" callback already took it off the map (an activity stream otherwise
        stays open for the life of the process)."""
        kernel_id = str(km.kernel_id)
        stream = getattr(km, "_activity_stream", None)
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()
            km._activity_stream = None
        self._kernel_connections.pop(kernel_id, None)
        self._kernel_ports.pop(kernel_id, None)
        self.discard_buffer(kernel_id)  # (stop_buffering wants it still mapped)
        super()._kernel_dropped(km, reason)

    def _forget_kernel(self, kernel_id: str) -> None:
        """Drop a kernel this replica no longer serves: no activity watch, and no
        sockets kept for a client that left."""
        self.stop_watching_activity(kernel_id)
        self.discard_buffer(kernel_id)
        self._kernel_connections.pop(kernel_id, None)
        super()._forget_kernel(kernel_id)

    def activity_save_seconds(self) -> float:
        """Seconds between activity saves: ``activity_save_interval``, but at most a
        third of the idle time-out, so that an owner culling on the store's activity
        never culls a kernel that is in use through another replica."""
        interval = self.activity_save_interval
        if self.cull_idle_timeout > 0:
            interval = min(interval, max(1.0, self.cull_idle_timeout / 3))
        return interval

    async def save_activity(self) -> None:
        """Save the activity this replica saw on its kernels (owned or not): the owner
        culls on the latest any replica saw. With ``cull_connected`` off, a kernel
        with clients connected here counts as active, as it does for one replica.
        A kernel with no new activity since the last save costs no write."""
        if self.kernel_store is None:
            return
        now = time.time()
        saved = self._saved_activity
        for kernel_id in set(saved) - set(self._kernels):
            del saved[kernel_id]
        for kernel_id, km in list(self._kernels.items()):
            stamp = getattr(km, "last_activity", None)
            if not self.cull_connected and self._kernel_connections.get(kernel_id):
                when = now
            elif stamp is not None:
                when = stamp.timestamp()
            else:
                continue
            if saved.get(kernel_id) != when:
                await self.kernel_store.touch(kernel_id, when)
                saved[kernel_id] = when

    async def _async_start_kernel(
        self,
        *,
        kernel_id: str | None = None,
        path: t.Any = None,  # type: ignore[override]
        **kwargs: t.Any,
    ) -> str:
        self._ensure_background_work()
        await self.restored()
        return await AsyncMappingKernelManager._async_start_kernel(
            self, kernel_id=kernel_id, path=path, **kwargs
        )

    start_kernel = _async_start_kernel  # type: ignore[assignment]

    def detach_all(self) -> None:
        if self._adopt_listening:  # a gateway stopping adopts nothing any more
            self._keeper().unlisten(self._owners_read)
            self._adopt_listening = False
        for kernel_id in list(self._kernels):
            self.stop_watching_activity(kernel_id)
            self._kernels.pop(kernel_id).detach()


def _holder_id(owner: Holder | None) -> str:
    return owner.holder_id if owner is not None else ""
