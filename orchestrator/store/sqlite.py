"""The embedded default store: one SQLite file in WAL mode.

Why SQLite: it needs no server, survives a ``kill -9`` of the writer without losing
committed transactions, and lets several orchestrator processes (the CLI, the
gateway) share one file safely through its own locking. The file holds every
kernel's HMAC key, so it is created 0600 inside a 0700 directory, and SQLite gives
its ``-wal``/``-shm`` companions the same mode as the database file.

Calls run on the store's own small thread pool, so an event loop is never blocked
on disk I/O and a slow disk never starves the threads other back-ends use. A writer
that holds the file locked makes a call fail after ``busy_timeout`` seconds with an
error saying so, rather than hang a request.
"""

from __future__ import annotations

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

from ..errors import OrchestratorError, StoreError, UnknownKernelError
from ..executors import run_blocking
from .base import KernelStore, fenced, granted_generation, refusal
from .lease import Holder, Lease, Ownership
from .migrations import SQLITE_MIGRATIONS, migrate
from .record import KernelRecord

log = logging.getLogger(__name__)

T = TypeVar("T")

_COLUMNS = "data, last_activity, owner_info, lease_expires, generation"


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


def _disk_full(path: Path) -> bool:
    """Whether the store's file system has (next to) no room left: SQLite reports a
    failure to create its shared-memory file there as a mere I/O error."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def explain_sqlite_error(path: Path, e: sqlite3.Error, busy_timeout: float) -> str:
    """One line naming what is wrong with the store file, not just SQLite's words."""
    text = str(e)
    if "locked" in text or "busy" in text:
        return (
            f"kernel store {path} is locked by another process (gave up after"
            f" {busy_timeout:g}s): {text}"
        )
    if "full" in text or ("I/O error" in text and _disk_full(path)):
        return f"kernel store {path}: the disk is full: {text}"
    if "readonly" in text or "read-only" in text:
        return f"kernel store {path} is read-only: {text}"
    return f"kernel store {path}: {text}"


class SQLiteKernelStore(KernelStore):
    """Kernel records in an SQLite database file."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path).expanduser()
        self.url = f"sqlite://{self.path}" if self.path.is_absolute() else f"sqlite:{self.path}"
        self.busy_timeout = busy_timeout
        self._lock = threading.Lock()
        try:
            _create_private_file(self.path)
            self._conn = sqlite3.connect(
                str(self.path), timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self._conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            self._conn.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed transaction survives even an OS crash, not just ours.
            self._conn.execute("PRAGMA synchronous=FULL")
            with self._transaction() as cur:
                self._version = migrate(cur, SQLITE_MIGRATIONS)
                cur.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('instance', ?)",
                    (uuid.uuid4().hex[:12],),
                )
                row = cur.execute("SELECT value FROM meta WHERE key='instance'").fetchone()
            self._instance = str(row[0])
        except sqlite3.Error as e:
            why = explain_sqlite_error(self.path, e, busy_timeout)
            raise StoreError(f"cannot open {why}") from e
        except OSError as e:
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
            try:
                if exc_type is None:
                    self.cur.execute("COMMIT")
                else:
                    self.cur.execute("ROLLBACK")
            except sqlite3.Error:
                if exc_type is None:
                    raise
                # The commit failed (disk full, I/O error): SQLite rolled back itself.
            finally:
                self.cur.close()

    def _transaction(self) -> SQLiteKernelStore._Tx:
        return SQLiteKernelStore._Tx(self._conn)

    def _run(self, fn: Callable[[], T]) -> T:
        with self._lock:
            try:
                return fn()
            except sqlite3.Error as e:
                raise StoreError(explain_sqlite_error(self.path, e, self.busy_timeout)) from e

    async def _call(self, fn: Callable[[], T]) -> T:
        return await run_blocking("store", self._run, fn)

    @staticmethod
    def _from_row(row: tuple[Any, ...]) -> KernelRecord:
        data, last_activity, owner_info, lease_expires, generation = row
        record = KernelRecord.from_json_dict(json.loads(data))
        record.last_activity = max(record.last_activity, last_activity)
        record.owner = json.loads(owner_info) if owner_info else {}
        record.lease_expires = float(lease_expires or 0.0)
        record.generation = int(generation or 0)
        return record

    @staticmethod
    def _ownership(cur: sqlite3.Cursor, kernel_id: str) -> Ownership | None:
        row = cur.execute(
            "SELECT owner_info, lease_expires, generation FROM kernels WHERE kernel_id=?",
            (kernel_id,),
        ).fetchone()
        if row is None:
            return None
        owner = Holder.from_dict(json.loads(row[0])) if row[0] else None
        return Ownership(owner, float(row[1] or 0.0), int(row[2] or 0))

    @classmethod
    def _check(cls, cur: sqlite3.Cursor, kernel_id: str, lease: Lease | None) -> bool:
        """Whether the row exists; raises if ``lease`` (or, without one, a live owner)
        forbids writing it."""
        own = cls._ownership(cur, kernel_id)
        if own is None:
            if lease is not None:
                raise fenced(kernel_id, lease, None)
            return False
        if lease is None:
            if own.live():
                raise refusal(kernel_id, own)
        elif (
            own.owner is None
            or own.owner.holder_id != lease.holder_id
            or own.generation != lease.generation
        ):
            raise fenced(kernel_id, lease, own)
        return True

    # --------------------------------------------------------------- interface
    @property
    def instance_id(self) -> str:
        return self._instance

    @property
    def schema_version(self) -> int:
        return self._version

    @staticmethod
    def _payload(record: KernelRecord) -> str:
        data = record.to_json_dict()
        for key in ("owner", "lease_expires", "generation"):
            data.pop(key, None)  # the columns hold these
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def _insert_row(
        cls, cur: sqlite3.Cursor, record: KernelRecord, owner: Holder | None, expires: float
    ) -> None:
        """A new row: owned by ``owner`` (generation 1), or unowned (generation 0)."""
        cur.execute(
            "INSERT INTO kernels(kernel_id, kernel_name, provisioner_name, created,"
            " last_activity, data, owner_id, owner_info, lease_expires, generation)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.kernel_id,
                record.kernel_name,
                record.provisioner_name,
                record.created,
                record.last_activity,
                cls._payload(record),
                owner.holder_id if owner else None,
                json.dumps(owner.to_dict()) if owner else None,
                expires,
                1 if owner else 0,
            ),
        )

    async def insert(self, record: KernelRecord, holder: Holder, lease_seconds: float) -> Lease:
        def op() -> Lease:
            expires = time.time() + lease_seconds
            with self._transaction() as cur:
                try:
                    self._insert_row(cur, record, holder, expires)
                except sqlite3.IntegrityError:
                    raise OrchestratorError(
                        f"kernel id {record.kernel_id!r} is already in use"
                    ) from None
            return Lease(record.kernel_id, holder.holder_id, 1, expires)

        return await self._call(op)

    def save_sync(self, record: KernelRecord, lease: Lease | None = None) -> None:
        def op() -> None:
            with self._transaction() as cur:
                if not self._check(cur, record.kernel_id, lease):
                    self._insert_row(cur, record, None, 0.0)
                    return
                cur.execute(
                    "UPDATE kernels SET kernel_name=?, provisioner_name=?,"
                    " last_activity=MAX(last_activity, ?), data=? WHERE kernel_id=?",
                    (
                        record.kernel_name,
                        record.provisioner_name,
                        record.last_activity,
                        self._payload(record),
                        record.kernel_id,
                    ),
                )

        self._run(op)

    async def save(self, record: KernelRecord, lease: Lease | None = None) -> None:
        await run_blocking("store", self.save_sync, record, lease)

    async def get(self, kernel_id: str) -> KernelRecord | None:
        def op() -> tuple[Any, ...] | None:
            return self._conn.execute(  # type: ignore[no-any-return]
                f"SELECT {_COLUMNS} FROM kernels WHERE kernel_id=?", (kernel_id,)
            ).fetchone()

        row = await self._call(op)
        return self._from_row(row) if row else None

    async def list(self) -> builtins.list[KernelRecord]:
        def op() -> builtins.list[tuple[Any, ...]]:
            return self._conn.execute(
                f"SELECT {_COLUMNS} FROM kernels ORDER BY created, kernel_id"
            ).fetchall()

        return [self._from_row(row) for row in await self._call(op)]

    async def delete(self, kernel_id: str, lease: Lease | None = None) -> bool:
        def op() -> bool:
            with self._transaction() as cur:
                if lease is not None and not self._check(cur, kernel_id, lease):
                    return False
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

    async def claim(
        self,
        kernel_id: str,
        holder: Holder,
        lease_seconds: float,
        *,
        force: bool = False,
        steal_generation: int | None = None,
    ) -> Lease:
        def op() -> Lease:
            with self._transaction() as cur:
                own = self._ownership(cur, kernel_id)
                if own is None:
                    raise UnknownKernelError(f"unknown kernel id {kernel_id!r}")
                now = time.time()
                generation = granted_generation(
                    own, holder, now, force=force, steal_generation=steal_generation
                )
                if generation is None:
                    raise refusal(kernel_id, own)
                cur.execute(
                    "UPDATE kernels SET owner_id=?, owner_info=?, lease_expires=?, generation=?"
                    " WHERE kernel_id=?",
                    (
                        holder.holder_id,
                        json.dumps(holder.to_dict()),
                        now + lease_seconds,
                        generation,
                        kernel_id,
                    ),
                )
            return Lease(kernel_id, holder.holder_id, generation, now + lease_seconds)

        return await self._call(op)

    async def renew(self, holder_id: str, lease_seconds: float) -> dict[str, int]:
        def op() -> dict[str, int]:
            with self._transaction() as cur:
                cur.execute(
                    "UPDATE kernels SET lease_expires=? WHERE owner_id=?",
                    (time.time() + lease_seconds, holder_id),
                )
                rows = cur.execute(
                    "SELECT kernel_id, generation FROM kernels WHERE owner_id=?", (holder_id,)
                ).fetchall()
            return {str(k): int(g) for k, g in rows}

        return await self._call(op)

    def release_now(self, lease: Lease) -> bool:
        def op() -> bool:
            with self._transaction() as cur:
                cur.execute(
                    "UPDATE kernels SET owner_id=NULL, owner_info=NULL, lease_expires=0"
                    " WHERE kernel_id=? AND owner_id=? AND generation=?",
                    (lease.kernel_id, lease.holder_id, lease.generation),
                )
                return cur.rowcount > 0

        return self._run(op)

    def integrity_check(self) -> str:
        """SQLite's own verdict on the file ('ok' when nothing is corrupt)."""
        return str(self._run(lambda: self._conn.execute("PRAGMA integrity_check").fetchone()[0]))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
