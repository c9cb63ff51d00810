"""Who owns a kernel: holders, leases and the generation that fences stale owners.

Every record has at most one *owner*: the process that does its lifecycle work
(restart, shutdown, interrupt, auto-restart, culling). Ownership is a lease that the
owner renews while it lives; when it stops renewing (``kill -9``, a frozen host) the
lease expires and another process may claim the kernel.

Each change of owner bumps the record's *generation*. An owner carries the generation
it claimed as a fencing token: every write it makes names that generation, and the
store refuses the write once someone else has claimed the kernel. So a process that
lost its kernel (its lease expired while it was frozen, or an operator forced a
take-over) can never undo the new owner's work, e.g. restart a kernel that was just
shut down.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Holder:
    """A process that can own kernels, as other processes see it in the store."""

    holder_id: str
    kind: str = "library"  # cli | gateway | library
    host: str = ""
    # Boot id and pid namespace: where ``pid`` means this process (two machines, or two
    # containers, may share a host name).
    machine: str = ""
    pid: int = 0
    start_ticks: int | None = None  # with pid: this process, not a later one with its pid

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Holder | None:
        if not data or not data.get("holder_id"):
            return None
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def describe(self) -> str:
        """``gateway (pid 1234 on host login1)``: what an error message shows."""
        return f"{self.kind} (pid {self.pid} on host {self.host or '?'})"


@dataclass(frozen=True)
class Lease:
    """A claim on one kernel: valid while the store's generation still equals ours."""

    kernel_id: str
    holder_id: str
    generation: int
    expires: float = field(default=0.0, compare=False)


@dataclass(frozen=True)
class Ownership:
    """A record's current owner as the store has it (``owner`` None: nobody)."""

    owner: Holder | None
    expires: float
    generation: int
    restarts: int = 0  # how often the kernel was restarted: a follower compares it

    def live(self, now: float | None = None) -> bool:
        """Whether the lease has not expired yet (its holder may still be dead)."""
        return self.owner is not None and self.expires > (time.time() if now is None else now)
