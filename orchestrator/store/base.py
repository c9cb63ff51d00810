"""The kernel store interface.

The managers only talk to this interface, so a server database (PostgreSQL, say)
can be added as another implementation without touching them. Implementations must
be safe for several orchestrator processes sharing one store.
"""

from __future__ import annotations

import abc
import builtins

from .record import KernelRecord


class KernelStore(abc.ABC):
    """Durable, process-safe storage of :class:`KernelRecord` objects."""

    url: str = ""

    @property
    @abc.abstractmethod
    def instance_id(self) -> str:
        """A stable id for the orchestrator deployment that owns this store.

        Resources (containers, pods, remote processes) are labelled with it, so that
        garbage collection only ever touches what this deployment created.
        """

    @abc.abstractmethod
    async def save(self, record: KernelRecord) -> None:
        """Insert or replace a record, atomically."""

    @abc.abstractmethod
    async def get(self, kernel_id: str) -> KernelRecord | None:
        """The record for ``kernel_id``, or None."""

    @abc.abstractmethod
    async def list(self) -> builtins.list[KernelRecord]:
        """Every record, oldest first."""

    @abc.abstractmethod
    async def delete(self, kernel_id: str) -> bool:
        """Remove a record; True if it existed."""

    @abc.abstractmethod
    async def touch(self, kernel_id: str, when: float | None = None) -> None:
        """Record activity on a kernel (for culling that survives restarts)."""

    async def find(self, kernel_id_or_prefix: str) -> builtins.list[KernelRecord]:
        """Records whose id equals or starts with the given text (for short ids)."""
        exact = await self.get(kernel_id_or_prefix)
        if exact is not None:
            return [exact]
        return [r for r in await self.list() if r.kernel_id.startswith(kernel_id_or_prefix)]

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store's connections."""


class MemoryKernelStore(KernelStore):
    """A non-durable store, for embedding managers where persistence is unwanted."""

    url = "memory:"

    def __init__(self) -> None:
        import uuid

        self._records: dict[str, KernelRecord] = {}
        self._instance = uuid.uuid4().hex[:12]

    @property
    def instance_id(self) -> str:
        return self._instance

    async def save(self, record: KernelRecord) -> None:
        self._records[record.kernel_id] = KernelRecord.from_json_dict(record.to_json_dict())

    async def get(self, kernel_id: str) -> KernelRecord | None:
        rec = self._records.get(kernel_id)
        return KernelRecord.from_json_dict(rec.to_json_dict()) if rec else None

    async def list(self) -> builtins.list[KernelRecord]:
        return sorted(
            (KernelRecord.from_json_dict(r.to_json_dict()) for r in self._records.values()),
            key=lambda r: r.created,
        )

    async def delete(self, kernel_id: str) -> bool:
        return self._records.pop(kernel_id, None) is not None

    async def touch(self, kernel_id: str, when: float | None = None) -> None:
        import time

        if kernel_id in self._records:
            self._records[kernel_id].last_activity = when or time.time()

    def close(self) -> None:
        pass
