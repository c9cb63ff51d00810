"""Errors the orchestrator raises on purpose.

Every one of them carries a one-line, human-readable message that names what was
wrong, so the CLI and the gateway can show it as-is instead of a traceback.
"""

from __future__ import annotations


class OrchestratorError(Exception):
    """Base class: an expected failure with a message fit for an end user."""


class StoreError(OrchestratorError):
    """The kernel store cannot be opened, read or written."""


class UnknownKernelError(OrchestratorError, KeyError):
    """No kernel record with that id (or id prefix) exists."""

    def __str__(self) -> str:  # KeyError would add quotes around the message
        return str(self.args[0]) if self.args else "unknown kernel"


class KernelGoneError(OrchestratorError):
    """A kernel record exists but its kernel is no longer running."""


class ReattachError(OrchestratorError):
    """A running kernel could not be re-attached from its saved record."""


class KernelStartError(OrchestratorError):
    """A kernel could not be started (the message says which step failed)."""


class NotEntitledError(KernelStartError):
    """The user may not use what the start asked for (a profile limited to others)."""


class KernelLimitError(OrchestratorError):
    """A limit on the number of kernels (in total or per user) would be exceeded."""


class OwnedElsewhereError(OrchestratorError):
    """Another live process owns the kernel, so this one may not do its lifecycle work."""

    def __init__(self, message: str, owner: object = None, expires: float = 0.0) -> None:
        super().__init__(message)
        self.owner = owner
        self.expires = expires


class FencedError(OrchestratorError):
    """This process's claim on a kernel is stale: another process has taken it over."""
