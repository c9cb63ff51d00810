"""kernel-orchestrator: Jupyter kernels in containers, pods, SSH hosts and batch jobs,
behind jupyter_client's own ``KernelManager`` interface."""

from __future__ import annotations

from . import procinfo
from .errors import (
    KernelGoneError,
    OrchestratorError,
    ReattachError,
    StoreError,
    UnknownKernelError,
)
from .manager import (
    AsyncIOLoopKernelManager,
    AsyncKernelManager,
    IOLoopKernelManager,
    KernelManager,
    attach,
)
from .multikernelmanager import AsyncMultiKernelManager, MultiKernelManager, RestoreReport
from .store import KernelRecord, KernelStore, open_store

__version__ = "0.1.0"

__all__ = [
    "AsyncIOLoopKernelManager",
    "AsyncKernelManager",
    "AsyncMultiKernelManager",
    "IOLoopKernelManager",
    "KernelGoneError",
    "KernelManager",
    "KernelRecord",
    "KernelStore",
    "MultiKernelManager",
    "OrchestratorError",
    "ReattachError",
    "RestoreReport",
    "StoreError",
    "UnknownKernelError",
    "__version__",
    "attach",
    "open_store",
    "procinfo",
]
