"""The kernel store interface.

The managers only talk to this interface, so a server database (PostgreSQL, say)
can be added as another implementation without touching them. Implementations must
be safe for several orchestrator processes sharing one store, and they carry the
ownership leases (see :mod:`.lease`): who may do a kernel's lifecycle work, and the
generation that fences a stale owner's writes.
"""

from __future__ import annotations

import abc
import builtins
import time
import uuid
from collections.abc import Collection
from dataclasses import dataclass, replace

from ..errors import (
    FencedError,
    KernelLimitError,
    OrchestratorError,
    OwnedElsewhereError,
    UnknownKernelError,
)
from .lease import Holder, Lease, Ownership
from .record import POOL_LABEL, TENANT_LABEL, KernelRecord


@dataclass(frozen=True)
class Limits:
    """How many kernels may exist at once, counted in the store across every process
    (every gateway replica) that shares it; 0 means no limit."""

    total: int = 0  # non-pooled kernels in all
    per_tenant: int = 0  # kernels of one user
    pool_size: int = 0  # unclaimed kernels of one warm pool


NO_LIMITS = Limits()


def limit_checks(
    tenant: str | None, pool: str | None, limits: Limits
) -> list[tuple[int, str | None, str | None]]:
    """What a reservation for ``tenant``/``pool`` must stay under: (limit, the tenant and
    pool to count, as :meth:`KernelStore.count` takes them)."""
    if pool is not None:
        return [(limits.pool_size, None, pool)]
    checks: list[tuple[int, str | None, str | None]] = [(limits.total, None, None)]
    if tenant is not None:
        checks.append((limits.per_tenant, tenant, None))
    return checks


def limit_refusal(limit: int, tenant: str | None, pool: str | None) -> KernelLimitError:
    if pool is not None:
        return KernelLimitError(f"warm pool {pool!r} already holds its {limit} kernels")
    if tenant is not None:
        return KernelLimitError(f"user {tenant!r} already has the maximum of {limit} kernels")
    return KernelLimitError(f"the gateway runs its maximum of {limit} kernels")


def granted_generation(
    current: Ownership,
    holder: Holder,
    now: float,
    *,
    force: bool = False,
    steal_generation: int | None = None,
) -> int | None:
    """The generation a claim by ``holder`` gets, or None if it is refused.

    Granted when nobody owns the kernel, when ``holder`` already does (same
    generation), when the lease has expired, when ``force`` is set, or when the
    caller proved the owner dead and names the generation it saw
    (``steal_generation``): a compare-and-set, so two processes that both saw the
    same dead owner cannot both win.
    """
    if current.owner is not None and current.owner.holder_id == holder.holder_id:
        return current.generation
    if (
        current.owner is None
        or force
        or current.expires <= now
        or (steal_generation is not None and steal_generation == current.generation)
    ):
        return current.generation + 1
    return None


def refusal(kernel_id: str, current: Ownership) -> OwnedElsewhereError:
    owner = current.owner
    until = time.strftime("%H:%M:%S", time.localtime(current.expires))
    who = owner.describe() if owner is not None else "another process"
    return OwnedElsewhereError(
        f"kernel {kernel_id} is owned by {who}, lease until {until}", owner, current.expires
    )


def fenced(kernel_id: str, lease: Lease, current: Ownership | None) -> FencedError:
    if current is None:
        return FencedError(f"kernel {kernel_id} is no longer in the store")
    who = current.owner.describe() if current.owner is not None else "nobody"
    return FencedError(
        f"kernel {kernel_id} was taken over (generation {current.generation}, owner {who});"
        f" this process's claim (generation {lease.generation}) is stale"
    )


class KernelStore(abc.ABC):
    """Durable, process-safe storage of :class:`KernelRecord` objects and their leases."""

    url: str = ""

    @property
    @abc.abstractmethod
    def instance_id(self) -> str:
        """A stable id for the orchestrator deployment that owns this store.

        Resources (containers, pods, remote processes) are labelled with it, so that
        garbage collection only ever touches what this deployment created.
        """

    @property
    def schema_version(self) -> int:
        """The version of the store's schema (migrations bring older stores up to it)."""
        return 0

    # ---------------------------------------------------------------- records
    @abc.abstractmethod
    async def insert(self, record: KernelRecord, holder: Holder, lease_seconds: float) -> Lease:
        """Add the record of a new kernel, owned by ``holder``; refuse an id in use."""

    @abc.abstractmethod
    async def save(self, record: KernelRecord, lease: Lease | None = None) -> None:
        """Insert or update a record, atomically.

        With ``lease`` the write is fenced: it fails with :class:`FencedError` unless
        the record still belongs to that lease's holder and generation. Without one,
        the record must have no live owner (an unowned insert or update).
        """

    @abc.abstractmethod
    async def get(self, kernel_id: str) -> KernelRecord | None:
        """The record for ``kernel_id`` (with its owner fields), or None."""

    @abc.abstractmethod
    async def list(self) -> builtins.list[KernelRecord]:
        """Every record, oldest first."""

    @abc.abstractmethod
    async def delete(self, kernel_id: str, lease: Lease | None = None) -> bool:
        """Remove a record; True if it existed. Fenced like :meth:`save` with ``lease``."""

    @abc.abstractmethod
    async def touch(self, kernel_id: str, when: float | None = None) -> None:
        """Record activity on a kernel (for culling that survives restarts). No lease needed:
        clients are active on kernels they do not own."""

    async def find(self, kernel_id_or_prefix: str) -> builtins.list[KernelRecord]:
        """Records whose id equals or starts with the given text (for short ids)."""
        exact = await self.get(kernel_id_or_prefix)
        if exact is not None:
            return [exact]
        return [r for r in await self.list() if r.kernel_id.startswith(kernel_id_or_prefix)]

    # --------------------------------------------------------------- leases
    @abc.abstractmethod
    async def claim(
        self,
        kernel_id: str,
        holder: Holder,
        lease_seconds: float,
        *,
        force: bool = False,
        steal_generation: int | None = None,
    ) -> Lease:
        """Make ``holder`` the owner (see :func:`granted_generation`), or raise
        :class:`OwnedElsewhereError` naming the live owner."""

    @abc.abstractmethod
    async def renew(self, holder_id: str, lease_seconds: float) -> dict[str, int]:
        """Extend every lease ``holder_id`` holds, in one write: kernel id -> generation."""

    @abc.abstractmethod
    async def ownerships(self, kernel_ids: Collection[str]) -> dict[str, Ownership]:
        """The current owner of each of ``kernel_ids`` that has a record, in one read
        (a process waiting to take kernels over asks this before claiming any)."""

    @abc.abstractmethod
    def release_now(self, lease: Lease) -> bool:
        """Give a kernel up (no owner) if ``lease`` still holds it. Blocking but short:
        jupyter_client's ``detach``-style calls are synchronous, and a process that lets
        go of a kernel must do so before it exits."""

    # ----------------------------------------------- limits, reservations, pools
    @abc.abstractmethod
    async def reserve(
        self,
        kernel_id: str,
        *,
        tenant: str | None,
        pool: str | None,
        limits: Limits,
        seconds: float,
    ) -> None:
        """Reserve a slot for a kernel about to start, or raise :class:`KernelLimitError`.

        Atomic across processes: kernels recorded plus live reservations are counted
        against ``limits`` (a pool's size for ``pool``, else the totals) and the
        reservation is added in one step, so replicas starting kernels at once can
        never exceed a limit together. Inserting the kernel's record ends the
        reservation; so does :meth:`unreserve`, or ``seconds`` passing.
        """

    @abc.abstractmethod
    async def unreserve(self, kernel_id: str) -> None:
        """Drop a reservation whose start failed."""

    @abc.abstractmethod
    async def count(self, *, tenant: str | None = None, pool: str | None = None) -> int:
        """Kernels counted as :meth:`reserve` counts them (a pool's unclaimed kernels,
        a tenant's, or all non-pooled ones)."""

    @abc.abstractmethod
    async def claim_pooled(
        self,
        pool: str,
        tenant: str,
        holder: Holder,
        lease_seconds: float,
        limits: Limits = NO_LIMITS,
    ) -> Lease | None:
        """Hand one unclaimed kernel of ``pool`` to ``tenant``, owned by ``holder``.

        Atomic: two replicas never hand out the same kernel, and a claimed kernel
        counts against ``limits`` (the totals and ``tenant``'s) as a cold start's
        reservation does, in the same step, so pooled and cold starts together
        never exceed a limit (:class:`KernelLimitError` when one is reached). The
        pool's previous owner (a peer replica) is fenced by the new generation.
        None when the pool is empty.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store's connections."""


class MemoryKernelStore(KernelStore):
    """A non-durable store, for embedding managers where persistence is unwanted."""

    url = "memory:"

    def __init__(self) -> None:
        self._records: dict[str, KernelRecord] = {}
        self._owners: dict[str, Ownership] = {}
        self._reservations: dict[str, tuple[str | None, str | None, float]] = {}
        self._instance = uuid.uuid4().hex[:12]

    @property
    def instance_id(self) -> str:
        return self._instance

    def _copy(self, kernel_id: str) -> KernelRecord:
        record = KernelRecord.from_json_dict(self._records[kernel_id].to_json_dict())
        own = self._owners.get(kernel_id, Ownership(None, 0.0, 0))
        record.owner = own.owner.to_dict() if own.owner else {}
        record.lease_expires, record.generation = own.expires, own.generation
        return record

    def _check(self, kernel_id: str, lease: Lease | None) -> None:
        own = self._owners.get(kernel_id)
        if lease is None:
            if own is not None and own.live():
                raise refusal(kernel_id, own)
            return
        if (
            own is None
            or own.generation != lease.generation
            or own.owner is None
            or (own.owner.holder_id != lease.holder_id)
        ):
            raise fenced(kernel_id, lease, own if kernel_id in self._records else None)

    async def insert(self, record: KernelRecord, holder: Holder, lease_seconds: float) -> Lease:
        if record.kernel_id in self._records:
            raise OrchestratorError(f"kernel id {record.kernel_id!r} is already in use")
        self._records[record.kernel_id] = KernelRecord.from_json_dict(record.to_json_dict())
        expires = time.time() + lease_seconds
        self._owners[record.kernel_id] = Ownership(holder, expires, 1)
        return Lease(record.kernel_id, holder.holder_id, 1, expires)

    async def save(self, record: KernelRecord, lease: Lease | None = None) -> None:
        if record.kernel_id in self._records:
            self._check(record.kernel_id, lease)
            old = self._records[record.kernel_id]
            record = KernelRecord.from_json_dict(record.to_json_dict())
            record.last_activity = max(record.last_activity, old.last_activity)
        elif lease is not None:
            raise fenced(record.kernel_id, lease, None)
        self._records[record.kernel_id] = KernelRecord.from_json_dict(record.to_json_dict())

    async def get(self, kernel_id: str) -> KernelRecord | None:
        return self._copy(kernel_id) if kernel_id in self._records else None

    async def list(self) -> builtins.list[KernelRecord]:
        return sorted((self._copy(k) for k in self._records), key=lambda r: r.created)

    async def delete(self, kernel_id: str, lease: Lease | None = None) -> bool:
        if kernel_id not in self._records:
            return False
        if lease is not None:
            self._check(kernel_id, lease)
        self._owners.pop(kernel_id, None)
        return self._records.pop(kernel_id, None) is not None

    async def touch(self, kernel_id: str, when: float | None = None) -> None:
        if kernel_id in self._records:
            rec = self._records[kernel_id]
            rec.last_activity = max(rec.last_activity, when or time.time())

    async def claim(
        self,
        kernel_id: str,
        holder: Holder,
        lease_seconds: float,
        *,
        force: bool = False,
        steal_generation: int | None = None,
    ) -> Lease:
        if kernel_id not in self._records:
            raise UnknownKernelError(f"unknown kernel id {kernel_id!r}")
        now = time.time()
        own = self._owners.get(kernel_id, Ownership(None, 0.0, 0))
        generation = granted_generation(
            own, holder, now, force=force, steal_generation=steal_generation
        )
        if generation is None:
            raise refusal(kernel_id, own)
        self._owners[kernel_id] = Ownership(holder, now + lease_seconds, generation)
        return Lease(kernel_id, holder.holder_id, generation, now + lease_seconds)

    async def renew(self, holder_id: str, lease_seconds: float) -> dict[str, int]:
        expires = time.time() + lease_seconds
        held = {}
        for kernel_id, own in list(self._owners.items()):
            if own.owner is not None and own.owner.holder_id == holder_id:
                self._owners[kernel_id] = Ownership(own.owner, expires, own.generation)
                held[kernel_id] = own.generation
        return held

    async def ownerships(self, kernel_ids: Collection[str]) -> dict[str, Ownership]:
        return {
            k: replace(
                self._owners.get(k, Ownership(None, 0.0, 0)), restarts=self._records[k].restarts
            )
            for k in kernel_ids
            if k in self._records
        }

    def release_now(self, lease: Lease) -> bool:
        own = self._owners.get(lease.kernel_id)
        if own is None or own.owner is None or own.generation != lease.generation:
            return False
        if own.owner.holder_id != lease.holder_id:
            return False
        self._owners[lease.kernel_id] = Ownership(None, 0.0, own.generation)
        return True

    def _live_reservations(self) -> builtins.list[tuple[str | None, str | None]]:
        now = time.time()
        self._reservations = {
            k: v for k, v in self._reservations.items() if v[2] > now and k not in self._records
        }
        return [(t, p) for t, p, _ in self._reservations.values()]

    async def count(self, *, tenant: str | None = None, pool: str | None = None) -> int:
        def counted(labels: dict[str, str]) -> bool:
            t, p = labels.get(TENANT_LABEL) or None, labels.get(POOL_LABEL) or None
            if pool is not None:
                return p == pool and t is None
            if tenant is not None:
                return t == tenant
            return t is not None or p is None

        recorded = sum(counted(r.labels) for r in self._records.values())
        reserved = 0
        for t, p in self._live_reservations():
            if pool is not None:
                reserved += p == pool
            elif tenant is not None:
                reserved += t == tenant
            else:
                reserved += p is None
        return recorded + reserved

    async def _check_limits(self, tenant: str | None, pool: str | None, limits: Limits) -> None:
        """Raise :class:`KernelLimitError` if one more kernel would exceed ``limits``."""
        for limit, who, which in limit_checks(tenant, pool, limits):
            if limit and await self.count(tenant=who, pool=which) >= limit:
                raise limit_refusal(limit, who, which)

    async def reserve(
        self,
        kernel_id: str,
        *,
        tenant: str | None,
        pool: str | None,
        limits: Limits,
        seconds: float,
    ) -> None:
        await self._check_limits(tenant, pool, limits)
        self._reservations[kernel_id] = (tenant, pool, time.time() + seconds)

    async def unreserve(self, kernel_id: str) -> None:
        self._reservations.pop(kernel_id, None)

    async def claim_pooled(
        self,
        pool: str,
        tenant: str,
        holder: Holder,
        lease_seconds: float,
        limits: Limits = NO_LIMITS,
    ) -> Lease | None:
        await self._check_limits(tenant or None, None, limits)
        for record in sorted(self._records.values(), key=lambda r: (r.created, r.kernel_id)):
            labels = record.labels or {}
            if labels.get(POOL_LABEL) == pool and not labels.get(TENANT_LABEL):
                own = self._owners.get(record.kernel_id, Ownership(None, 0.0, 0))
                same = own.owner is not None and own.owner.holder_id == holder.holder_id
                generation = own.generation if same else own.generation + 1
                expires = time.time() + lease_seconds
                self._owners[record.kernel_id] = Ownership(holder, expires, generation)
                record.labels = {TENANT_LABEL: tenant}
                return Lease(record.kernel_id, holder.holder_id, generation, expires)
        return None

    def close(self) -> None:
        pass
