"""Slurm's view of our jobs: one ``squeue`` per login host and account for all kernels.

Every kernel's ``poll()`` (restarters, start-up waits) reads a shared snapshot: one
agent request runs ``squeue --me`` once and reads the kernels' state files, and that
answer serves every caller within its age limit. A failing or timed-out squeue is
*unknown*: callers get :class:`QueueUnknown`, the next attempt waits with exponential
backoff, and no job is ever taken for gone because the controller did not answer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import OrchestratorError
from orchestrator.executors import executor
from orchestrator.forks import reset_in_child

from ..ssh.agent import RemoteAgent

# Job states in which the job still holds (or waits for) its allocation.
PENDING = (
    "PENDING",
    "CONFIGURING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "STOPPED",
    "SIGNALING",
)
RUNNING = ("RUNNING", "COMPLETING", "STAGE_OUT")
ENDED_WHY = {
    "COMPLETED": "the job ended",
    "CANCELLED": "the job was cancelled",
    "TIMEOUT": "the job reached its time limit (walltime)",
    "NODE_FAIL": "the job's node failed",
    "OUT_OF_MEMORY": "the job ran out of memory",
    "FAILED": "the job failed",
    "PREEMPTED": "the job was preempted",
    "BOOT_FAIL": "the job's node failed to boot",
    "DEADLINE": "the job reached its deadline",
    "REVOKED": "the job was revoked",
    "SPECIAL_EXIT": "the job ended (special exit)",
}


def ended_why(state: str) -> str:
    """Why a job in ``state`` (an ended one) is gone, in words."""
    return ENDED_WHY.get(state, f"the job ended ({state.lower()})")


class QueueUnknown(OrchestratorError):
    """Slurm could not be asked right now (controller unreachable, time-out)."""


@dataclass
class Snapshot:
    taken: float = 0.0
    jobs: dict[str, dict[str, str]] = field(default_factory=dict)
    kernels: dict[str, Any] = field(default_factory=dict)


class ClusterQueue:
    """The shared snapshot of one login host's queue, as one account sees it."""

    max_backoff = 30.0

    def __init__(self, agent: RemoteAgent, base_dir: str) -> None:
        self.agent = agent
        self.base_dir = base_dir
        self.tracked: set[str] = set()
        self.snapshot = Snapshot()
        self.requests = 0  # squeue runs (what the benchmark counts)
        self.failures = 0
        self.last_error = ""
        self._next_try = 0.0
        self._lock = threading.Lock()
        self._refresh: concurrent.futures.Future[None] | None = None

    async def read(self, kernel_id: str, max_age: float) -> Snapshot:
        """A snapshot at most ``max_age`` old that covers ``kernel_id``."""
        self.tracked.add(kernel_id)
        snap = self.snapshot
        if time.monotonic() - snap.taken <= max_age and kernel_id in snap.kernels:
            return snap
        if self.failures and time.monotonic() < self._next_try:
            raise QueueUnknown(self.last_error)
        with self._lock:
            refresh = self._refresh
            if refresh is None or refresh.done():
                refresh = self._refresh = executor("ssh").submit(self._refresh_now)
        await asyncio.wrap_future(refresh)
        if self.snapshot.taken == snap.taken or kernel_id not in self.snapshot.kernels:
            raise QueueUnknown(self.last_error or "no answer from the login host")
        return self.snapshot

    def _refresh_now(self) -> None:
        started = time.monotonic()
        self.requests += 1
        try:
            reply = self.agent.request(
                "slurm_poll",
                {"base_dir": self.base_dir, "kernels": sorted(self.tracked), "timeout": 15},
                30,
            )
        except OrchestratorError as e:
            self.failures += 1
            self.last_error = f"Slurm status unknown: {e}"
            self._next_try = time.monotonic() + min(self.max_backoff, 0.5 * 2**self.failures)
            return
        self.failures, self.last_error = 0, ""
        self.snapshot = Snapshot(started, reply.get("jobs") or {}, reply.get("kernels") or {})

    def untrack(self, kernel_id: str) -> None:
        self.tracked.discard(kernel_id)

    def invalidate(self) -> None:
        self.snapshot = Snapshot()


_queues: dict[tuple[int, str], ClusterQueue] = {}
_queues_lock = threading.Lock()


def queue_for(agent: RemoteAgent, base_dir: str) -> ClusterQueue:
    key = (id(agent), base_dir)
    with _queues_lock:
        queue = _queues.get(key)
        if queue is None or queue.agent is not agent:
            queue = _queues[key] = ClusterQueue(agent, base_dir)
        return queue


@reset_in_child
def _reset_after_fork() -> None:
    """The parent's queue snapshots are refreshed by threads a forked child lacks."""
    global _queues, _queues_lock
    _queues = {}
    _queues_lock = threading.Lock()
