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
from collections.abc import Collection
from dataclasses import dataclass

from ..errors import (
    FencedError,
    KernelLimitError,
    OwnedElsewhereError,
)
from .lease import Holder, Lease, Ownership
from .record import KernelRecord


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
    async def ownerships(self, kernel_ids: Collection[str] | None = None) -> dict[str, Ownership]:
        """The current owner (and restart count) of each of ``kernel_ids`` that has a
        record, or of every kernel (None), in one read without payloads: a process
        waiting to take kernels over, or following restarts, asks this per interval."""

    @abc.abstractmethod
    async def list_if_changed(
        self, seen: int | None
    ) -> tuple[int, builtins.list[KernelRecord] | None]:
        """The store's change count and, if it is not ``seen``, every record (else None),
        read together. Every write of a record (insert, save, delete, activity, a pool's
        hand-out) bumps the count; leases do not. A listing served from a cache costs one
        tiny read while nothing changed."""

    @abc.abstractmethod
    async def change_count(self) -> int:
        """The store's change count (see :meth:`list_if_changed`): also a cheap ping."""

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
