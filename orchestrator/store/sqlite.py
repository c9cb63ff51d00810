"""The embedded default store: one SQLite file in WAL mode.

Why SQLite: it needs no server, survives a ``kill -9`` of the writer without losing
committed transactions, and lets several orchestrator processes (the CLI, the
gateway) share one file safely through its own locking. The file holds every
kernel's HMAC key, so it is created 0600 inside a 0700 directory, and SQLite gives
its ``-wal``/``-shm`` companions the same mode as the database file.

Calls run in a worker thread so an event loop is never blocked on disk I/O.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import logging
import os
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ..errors import StoreError
from .base import KernelStore
from .record import KernelRecord

log = logging.getLogger(__name__)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS kernels (
    kernel_id        TEXT PRIMARY KEY,
    kernel_name      TEXT NOT NULL,
    provisioner_name TEXT NOT NULL,
    created          REAL NOT NULL,
    last_activity    REAL NOT NULL,
    data             TEXT NOT NULL
);
"""
SCHEMA_VERSION = "1"


def _create_private_file(path: Path) -> None:
    """Create ``path`` (and its directory) readable by the owner only."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            log.warning("kernel store %s had mode %o; tightening it to 0600", path, mode)
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


class SQLiteKernelStore(KernelStore):
    """Kernel records in an SQLite database file."""

    def __init__(self, path: str | os.PathLike[str], *, timeout: float = 30.0) -> None:
        self.path = Path(path).expanduser()
        self.url = f"sqlite://{self.path}" if self.path.is_absolute() else f"sqlite:{self.path}"
        self._lock = threading.Lock()
        try:
            _create_private_file(self.path)
            self._conn = sqlite3.connect(
                str(self.path), timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed transaction survives even an OS crash, not just ours.
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            with self._transaction() as cur:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        cur.execute(statement)
                cur.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
                )
                cur.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('instance', ?)",
                    (uuid.uuid4().hex[:12],),
                )
                row = cur.execute("SELECT value FROM meta WHERE key='instance'").fetchone()
            self._instance = str(row[0])
        except (OSError, sqlite3.Error) as e:
            raise StoreError(f"cannot open kernel store {self.path}: {e}") from e

    # ------------------------------------------------------------------ helpers
    class _Tx:
        """``BEGIN IMMEDIATE`` … ``COMMIT``: one writer at a time, all or nothing."""

        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def __enter__(self) -> sqlite3.Cursor:
            self.cur = self.conn.cursor()
            self.cur.execute("BEGIN IMMEDIATE")
            return self.cur

        def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
            if exc_type is None:
                self.cur.execute("COMMIT")
            else:
                self.cur.execute("ROLLBACK")
            self.cur.close()

    def _transaction(self) -> SQLiteKernelStore._Tx:
        return SQLiteKernelStore._Tx(self._conn)

    def _run(self, fn: Callable[[], T]) -> T:
        with self._lock:
            try:
                return fn()
            except sqlite3.Error as e:
                raise StoreError(f"kernel store {self.path}: {e}") from e

    async def _call(self, fn: Callable[[], T]) -> T:
        return await asyncio.to_thread(self._run, fn)

    # --------------------------------------------------------------- interface
    @property
    def instance_id(self) -> str:
        return self._instance

    def save_sync(self, record: KernelRecord) -> None:
        payload = json.dumps(record.to_json_dict(), separators=(",", ":"))

        def op() -> None:
            with self._transaction() as cur:
                cur.execute(
                    "INSERT INTO kernels(kernel_id, kernel_name, provisioner_name, created,"
                    " last_activity, data) VALUES (?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT(kernel_id) DO UPDATE SET kernel_name=excluded.kernel_name,"
                    " provisioner_name=excluded.provisioner_name,"
                    " last_activity=MAX(kernels.last_activity, excluded.last_activity),"
                    " data=excluded.data",
                    (
                        record.kernel_id,
                        record.kernel_name,
                        record.provisioner_name,
                        record.created,
                        record.last_activity,
                        payload,
                    ),
                )

        self._run(op)

    async def save(self, record: KernelRecord) -> None:
        await asyncio.to_thread(self.save_sync, record)

    @staticmethod
    def _from_row(row: tuple[str, float]) -> KernelRecord:
        record = KernelRecord.from_json_dict(json.loads(row[0]))
        record.last_activity = max(record.last_activity, row[1])
        return record

    async def get(self, kernel_id: str) -> KernelRecord | None:
        def op() -> tuple[str, float] | None:
            return self._conn.execute(  # type: ignore[no-any-return]
                "SELECT data, last_activity FROM kernels WHERE kernel_id=?", (kernel_id,)
            ).fetchone()

        row = await self._call(op)
        return self._from_row(row) if row else None

    async def list(self) -> builtins.list[KernelRecord]:
        def op() -> builtins.list[tuple[str, float]]:
            return self._conn.execute(
                "SELECT data, last_activity FROM kernels ORDER BY created, kernel_id"
            ).fetchall()

        return [self._from_row(row) for row in await self._call(op)]

    async def delete(self, kernel_id: str) -> bool:
        def op() -> bool:
            with self._transaction() as cur:
                cur.execute("DELETE FROM kernels WHERE kernel_id=?", (kernel_id,))
                return cur.rowcount > 0

        return await self._call(op)

    async def touch(self, kernel_id: str, when: float | None = None) -> None:
        stamp = when if when is not None else time.time()

        def op() -> None:
            with self._transaction() as cur:
                cur.execute(
                    "UPDATE kernels SET last_activity=MAX(last_activity, ?) WHERE kernel_id=?",
                    (stamp, kernel_id),
                )

        await self._call(op)

    def close(self) -> None:
        with self._lock:
            self._conn.close()
