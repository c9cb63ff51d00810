"""Kernel stores: where every kernel's record lives so another process can find it."""

from __future__ import annotations

import os
from pathlib import Path

from jupyter_core.paths import jupyter_data_dir

from ..errors import StoreError
from .base import KernelStore, Limits
from .record import KernelRecord
from .sqlite import SQLiteKernelStore

__all__ = [
    "KernelRecord",
    "KernelStore",
    "Limits",
    "SQLiteKernelStore",
    "default_store_url",
    "open_store",
]

STORE_URL_ENV = "KERNEL_ORCHESTRATOR_STORE"


def default_store_url() -> str:
    """``$KERNEL_ORCHESTRATOR_STORE``, else an SQLite file in the Jupyter data dir."""
    env = os.environ.get(STORE_URL_ENV)
    if env:
        return env
    return f"sqlite://{Path(jupyter_data_dir()).resolve() / 'kernel-orchestrator' / 'kernels.db'}"


def open_store(url: str | None = None) -> KernelStore:
    """Open the store a URL names.

    Accepted forms: ``postgresql://USER@HOST:PORT/DB`` (or ``postgres://``; any libpq
    URL), ``sqlite:///absolute/path.db``, ``sqlite:relative.db``, a plain file path,
    and ``memory:`` (nothing persisted). A store that cannot be opened raises
    :class:`StoreError` naming it (never its password) and why.
    """
    url = url or default_store_url()
    if url in ("memory:", "memory://"):
        return SQLiteKernelStore(":memory:")
    if url.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresKernelStore

        return PostgresKernelStore(url)
    if url.startswith("sqlite:"):
        path = url[len("sqlite:") :]
        if path.startswith("//"):
            path = path[2:]  # sqlite://<empty host>/abs/path
        if path.startswith("//"):
            path = "/" + path.lstrip("/")
        if not path:
            raise StoreError(f"kernel store URL {url!r} names no file")
        return SQLiteKernelStore(path)
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise StoreError(
            f"unsupported kernel store URL scheme {scheme!r} (use postgresql://, sqlite://"
            " or memory:)"
        )
    return SQLiteKernelStore(url)
