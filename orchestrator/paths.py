"""Private directories the orchestrator writes to."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from jupyter_core.paths import jupyter_runtime_dir


def private_dir(path: Path) -> Path:
    """Create ``path`` 0700 if missing (it holds kernel logs and connection files).

    ``mkdir(parents=True)`` applies the mode only to the last component, so our own
    intermediate directories are tightened explicitly.
    """
    path.mkdir(parents=True, mode=0o700, exist_ok=True)
    for part in (path, path.parent):
        if part.name in ("logs", "kernel-orchestrator"):
            os.chmod(part, 0o700)
    return path


def kernel_log_dir() -> Path:
    """Where local kernels' stdout/stderr go (so a detached kernel never writes to a dead tty)."""
    return private_dir(Path(jupyter_runtime_dir()) / "kernel-orchestrator" / "logs")


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_APPEND) -> int:
    """Open ``path`` as a 0600 file and return the descriptor."""
    return os.open(path, flags, 0o600)


class SecretFileError(OSError):
    """A file of secrets cannot be read, or others could read it too."""


def read_secret_file(path: str | os.PathLike[str]) -> str:
    """The text of a file of secrets (tokens), read and checked through one descriptor.

    Group read is let through: a Kubernetes Secret volume is 0440 with the pod's
    fsGroup, a group of the gateway's alone. Anything for "others", group write, and
    an owner other than this account or root (who could edit it) are refused, naming
    the fix.
    """
    with open(path, encoding="utf-8") as f:
        info = os.fstat(f.fileno())
        if info.st_uid not in (0, os.geteuid()):
            raise SecretFileError(
                f"it belongs to uid {info.st_uid}, who could change it; chown it to this"
                f" account (uid {os.geteuid()}) or root"
            )
        if info.st_mode & (stat.S_IWGRP | stat.S_IXGRP | stat.S_IRWXO):
            raise SecretFileError(
                f"others can read it (mode {stat.S_IMODE(info.st_mode):o}); chmod 600 it"
            )
        return f.read()
