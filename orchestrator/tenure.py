"""A kernel's tenure in this process: its record, its lease, and what follows from them.

Every kernel has at most one owner, the process holding its lease in the store (see
:mod:`orchestrator.ownership`). This mixin is the one place that decides, for one
kernel manager, which of these it is (:class:`LeaseState`) and moves between them:

* ``UNRECORDED`` -- starting; no record yet. The first save inserts the record owned by
  this process (``OWNER``).
* ``OWNER`` -- holds the lease: does the lifecycle work (restart, shutdown, interrupt,
  auto-restart, culling). Every save is fenced by the lease's generation.
* ``WANTING`` -- serves the kernel's clients while another process owns it, and takes
  it over (``OWNER``) when that owner's lease lapses, after following what the owner
  did (:meth:`_take_up`).
* ``CLIENT`` -- serves the kernel's clients and wants nothing; a lifecycle call claims
  the lease first.
* ``FENCED`` -- was the owner; another process took the kernel over or removed it. No
  lifecycle work any more (a gateway replica goes back to ``WANTING`` on a request).
* ``RELEASED`` -- let go (detached, shut down, dropped).

In every state but ``UNRECORDED`` and ``RELEASED`` the lease keeper watches the
kernel's restart count, so a restart another process did is followed here
(:meth:`follow_record`, the manager's) without waiting for a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import typing as t

from . import faults, lifetime, ownership
from .errors import FencedError, UnknownKernelError
from .store import KernelRecord, KernelStore
from .store.lease import Lease

log = logging.getLogger("kernel-orchestrator")


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The loop the keeper's callbacks go to (None: a blocking manager between calls)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class LeaseState(enum.Enum):
    """Where this process stands with one kernel (see the module docstring)."""

    UNRECORDED = "unrecorded"
    OWNER = "owner"
    WANTING = "wanting"
    CLIENT = "client"
    FENCED = "fenced"
    RELEASED = "released"


class KernelTenureMixin:
    """The lease and record side of a kernel manager (see the module docstring)."""

    _lease: Lease | None = None
    _recorded: bool = False  # the kernel has a record (ours, or one we re-attached to)
    _lost_reason: str = ""  # why this process no longer owns the kernel
    _lost_callbacks: list[t.Callable[[str], t.Any]] | None = None
    _released: bool = False

    # Provided by the manager; declared for type checkers.
    if t.TYPE_CHECKING:
        kernel_store: KernelStore | None
        kernel_id: str
        lease_seconds: float
        log: t.Any
        provisioner: t.Any
        _restart_count: int
        _dropped: str

        async def build_record(self) -> KernelRecord: ...
        async def follow_record(self, record: KernelRecord) -> None: ...
        def start_restarter(self) -> None: ...
        def stop_restarter(self) -> None: ...

        @property
        def has_kernel(self) -> bool: ...

    @property
    def lease_state(self) -> LeaseState:
        """Where this process stands with the kernel now."""
        if self._released:
            return LeaseState.RELEASED
        if self._lease is not None:
            return LeaseState.OWNER
        if not self._recorded:
            return LeaseState.UNRECORDED
        if self._lost_reason:
            return LeaseState.FENCED
        if self.kernel_store is not None and self._keeper().wants(self.kernel_id):
            return LeaseState.WANTING
        return LeaseState.CLIENT

    @property
    def is_recorded(self) -> bool:
        """Whether the kernel has a record in the store (ours, or one re-attached to)."""
        return self._recorded

    # -------------------------------------------------------------- ownership
    @property
    def is_owner(self) -> bool:
        """Whether this process holds the kernel's lease (does its lifecycle work)."""
        return self._lease is not None or self.kernel_store is None

    @property
    def owner_lost_reason(self) -> str:
        """Why this manager lost its kernel to another process ('' while it has not)."""
        return self._lost_reason

    def on_ownership_lost(self, callback: t.Callable[[str], t.Any]) -> None:
        """Call ``callback(reason)`` when another process takes this kernel over."""
        if self._lost_callbacks is None:
            self._lost_callbacks = []
        self._lost_callbacks.append(callback)

    def _keeper(self) -> ownership.LeaseKeeper:
        assert self.kernel_store is not None
        return ownership.keeper_for(self.kernel_store, self.lease_seconds)

    def _hold(self, lease: Lease) -> None:
        self._lease, self._lost_reason = lease, ""
        self._keeper().hold(lease, functools.partial(self._lost_lease, lease), _running_loop())

    def _lost_lease(self, lease: Lease, reason: str) -> None:
        """The keeper found ``lease`` lost: lost for us only if it is still the one we
        hold (a notice about an earlier lease must not let go of a newer one)."""
        if self._lease is lease:
            self._lease_lost(reason)

    def _let_go(self) -> Lease | None:
        """Stop renewing our lease (the caller releases it or deletes the record)."""
        lease, self._lease = self._lease, None
        if self.kernel_store is not None and self.kernel_id:
            self._keeper().drop(self.kernel_id, lease)
        return lease

    async def claim_ownership(self, *, force: bool = False) -> None:
        """Become the kernel's owner; ``force`` fences the current owner.

        Raises :class:`OwnedElsewhereError` while a live process owns it.
        """
        if self.kernel_store is None:
            return
        if self._lease is not None and not force:
            await self._ensure_owner()
            return
        lease = await ownership.claim(
            self.kernel_store, self.kernel_id, self.lease_seconds, force=force
        )
        self._hold(lease)
        # A restart the last owner did (a new container, pod or job) is caught up with
        # before this process acts as the owner: a process that still believed itself
        # the owner when it was done never followed it, and would stop the process that
        # is gone and leave the new one running.
        record = await self.kernel_store.get(self.kernel_id)
        if record is not None:
            await self.follow_record(record)

    async def _ensure_owner(self) -> None:
        """Refuse lifecycle work unless this process still owns the kernel.

        Checked against the store itself, not our memory of the lease: an owner whose
        kernel was taken over (or shut down) by another process must never restart it.
        """
        if self.kernel_store is None:
            return
        if self._lease is None:
            if self._lost_reason:
                raise FencedError(
                    f"kernel {self.kernel_id} is no longer managed by this process:"
                    f" {self._lost_reason}"
                )
            await self.claim_ownership()
            return
        lease = self._lease  # (before the await: a concurrent call may let it go)
        if lease.holder_id != ownership.this_holder().holder_id:
            # Inherited across fork(): the parent's lease, not this process's.
            self._lease_lost("this process is a fork of the kernel's owner")
            raise FencedError(f"kernel {self.kernel_id} is its parent process's, not ours")
        record = await self.kernel_store.get(self.kernel_id)
        if (
            record is None
            or record.generation != lease.generation
            or record.owner.get("holder_id") != lease.holder_id
        ):
            why = (
                "its record was removed"
                if record is None
                else f"another process took it over (generation {record.generation})"
            )
            self._lease_lost(why)
            raise FencedError(f"kernel {self.kernel_id} is no longer ours: {why}")

    def _lease_lost(self, reason: str) -> None:
        """Another process owns the kernel now: stop managing it, tell who asked."""
        if self._lease is None and self._lost_reason:
            return
        self._let_go()
        self._lost_reason = reason or "taken over by another process"
        with contextlib.suppress(Exception):
            self.stop_restarter()
        lifetime.forget(self)
        for callback in self._lost_callbacks or []:
            try:
                callback(self._lost_reason)
            except Exception:
                log.exception("ownership-lost callback failed")

    def _lease_claimed(self, lease: Lease) -> None:
        """The owner's lease lapsed and we took over: start doing the lifecycle work,
        once caught up with what the previous owner did (see :meth:`_take_up`)."""
        if self._released or self._dropped:  # let go meanwhile: not ours to keep
            with contextlib.suppress(Exception):
                if self.kernel_store is not None:
                    self.kernel_store.release_now(lease)
            return
        self._hold(lease)
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # no loop here (sync use): nothing to catch up from
            if self.has_kernel:  # type: ignore[attr-defined]
                self.start_restarter()
            return
        lifetime.spawn(self._take_up())

    async def _take_up(self) -> None:
        """Catch up with the record, then watch the kernel as its owner.

        As a client we kept the provisioner state we attached with; the previous owner
        may have restarted the kernel since (a new process, pod or container on the
        same ports). Watching the old one would find it dead and restart a live
        kernel, losing its state.
        """
        assert self.kernel_store is not None
        try:
            record = await self.kernel_store.get(self.kernel_id)
        except Exception as e:  # the store is down: the restarter must not guess
            self._lease_lost(f"the store could not be read to take it over: {e}")
            return
        if record is None:
            self._lease_lost("its record was removed")
            return
        try:
            await self.follow_record(record)
        except Exception as e:  # its new process unreachable from here: not ours to watch
            self._lease_lost(f"the restart it had could not be followed here: {e}")
            return
        if self.is_owner and self.has_kernel:  # type: ignore[attr-defined]
            self.start_restarter()

    def want_ownership(self) -> None:
        """Take the kernel over as soon as its current owner's lease lapses (WANTING)."""
        if self.kernel_store is None or self._lease is not None:
            return
        self._keeper().want(self.kernel_id, self._lease_claimed, _running_loop(), self._lease_lost)

    def serve_as_client(self) -> None:
        """After losing the kernel to another gateway replica (FENCED): serve its
        clients from here and take it over again when that replica's lease lapses, or
        when a lifecycle request here asks for it (WANTING)."""
        self._lost_reason = ""
        self.want_ownership()

    def unfence(self) -> None:
        """Forget that another process took the kernel over, so that a lifecycle call
        here may claim it again (a gateway replica, for a request it was sent)."""
        self._lost_reason = ""

    def hold_lease(self, lease: Lease) -> None:
        """Own the kernel with ``lease``, granted by the store elsewhere (a warm pool's
        hand-out claims the kernel in the same transaction)."""
        self._hold(lease)

    def _watch_restarts(self) -> None:
        """Follow restarts other processes do while this one does not own the kernel
        (the lease keeper reads the restart counts with the owners: no payloads)."""
        if self.kernel_store is None or not self.kernel_id:
            return
        self._keeper().watch(
            self.kernel_id, self._restart_count, self._restarted_elsewhere, _running_loop()
        )

    def _restarted_elsewhere(self, restarts: int) -> None:
        if self.is_owner or restarts == self._restart_count or self._dropped:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # sync use: the next call that reads the record follows
            return
        lifetime.spawn(self._follow_latest())

    async def _follow_latest(self) -> None:
        assert self.kernel_store is not None
        try:
            record = await self.kernel_store.get(self.kernel_id)
            if record is not None and not self.is_owner:
                await self.follow_record(record)
        except Exception as e:
            self.log.warning("kernel %s: could not follow its restart: %s", self.kernel_id, e)

    # ---------------------------------------------------------------- record
    async def save_record(self) -> None:
        """Save (or update) this kernel's record. Provisioners call it when their state changes.

        The first save of a new kernel inserts its record owned by this process; every
        later one is fenced by our lease, so a process that lost the kernel cannot
        overwrite the new owner's record.
        """
        if self.kernel_store is None or self.provisioner is None:
            return
        record = await self.build_record()
        if self._lease is None:
            if not self._recorded:  # pre_start checked the id; insert refuses a taken one
                # The kernel runs (a provisioner saves as soon as its resources exist).
                faults.checkpoint("after-launch")
                await self._insert_record(record)
                faults.checkpoint("after-save")
                return
            await self._ensure_owner()
        try:
            await self.kernel_store.save(record, self._lease)
        except FencedError as e:
            self._lease_lost(str(e))
            raise

    async def _insert_record(self, record: KernelRecord) -> None:
        """Insert the first record, and know that it exists even if our caller is cancelled.

        The insert goes on in the store (a thread, a database server) when the awaiting
        task is cancelled, as a start cancelled while its Slurm job waits in the queue
        is. Had the cancel left us not knowing, the cleanup that follows would skip the
        record, and it would stay behind until gc.
        """
        assert self.kernel_store is not None
        insert = asyncio.ensure_future(
            self.kernel_store.insert(record, ownership.this_holder(), self.lease_seconds)
        )
        try:
            lease = await asyncio.shield(insert)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # (a failed insert left nothing to forget)
                self._hold(await insert)
                self._recorded = True
            raise
        self._recorded = True
        self._hold(lease)

    async def forget_record(self) -> None:
        """Remove the record (fenced: only while this process still owns the kernel)."""
        if self.kernel_store is None or not self.kernel_id or not self._recorded:
            return
        lease = self._let_go()
        if lease is None:
            try:
                lease = await ownership.claim(self.kernel_store, self.kernel_id, self.lease_seconds)
            except UnknownKernelError:
                self._recorded = False
                return
        with contextlib.suppress(FencedError):
            await self.kernel_store.delete(self.kernel_id, lease)
            self._recorded = False
