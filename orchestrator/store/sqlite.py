"""The embedded default store: one SQLite file in WAL mode.

Why SQLite: it needs no server, survives a ``kill -9`` of the writer without losing
committed transactions, and lets several orchestrator processes (the CLI, the
gateway) share one file safely through its own locking. The file holds every
kernel's HMAC key, so it is created 0600 inside a 0700 directory, and SQLite gives
its ``-wal``/``-shm`` companions the same mode as the database file.

Calls run on the store's own small thread pool, so an event loop is never blocked
on disk I/O and a slow disk never starves the threads other back-ends use. A writer
that holds the file locked makes a call fail after ``busy_timeout`` seconds with an
error saying so, rather than hang a request. Several machines need a server store
(:mod:`.postgres`): SQLite's locking does not work over network file systems.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

from ..errors import StoreError
from .migrations import SQLITE_MIGRATIONS
from .sql import Dialect, SQLKernelStore

log = logging.getLogger(__name__)

SQLITE = Dialect(
    name="sqlite",
    placeholder="?",
    greatest="MAX",
    for_update="",  # BEGIN IMMEDIATE holds the database's write lock already
    skip_locked="",
    lock_reservations="",
    table_exists="SELECT name FROM sqlite_master WHERE type='table' AND name=?",
    now="((julianday('now') - 2440587.5) * 86400.0)",
)


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


class _Transaction:
    """``BEGIN IMMEDIATE`` … ``COMMIT``: one writer at a time, all or nothing (or, for
    reads, ``BEGIN DEFERRED``: one snapshot, never waiting for the write lock)."""

    def __init__(self, conn: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> None:
        self.conn = conn
        self.begin = begin

    def __enter__(self) -> sqlite3.Cursor:
        self.cur = self.conn.cursor()
        self.cur.execute(self.begin)
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


MEMORY = ":memory:"


class SQLiteKernelStore(SQLKernelStore):
    """Kernel records in an SQLite database file (or, for ``:memory:``, in this
    process's memory only: the ``memory:`` store, with the same leases, limits and
    pools as every other, since it is the same code)."""

    dialect = SQLITE
    migrations = SQLITE_MIGRATIONS

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 5.0) -> None:
        super().__init__()
        self.in_memory = str(path) == MEMORY
        self.path = Path(path) if self.in_memory else Path(path).expanduser()
        if self.in_memory:
            self.url = "memory:"
        else:
            self.url = f"sqlite://{self.path}" if self.path.is_absolute() else f"sqlite:{self.path}"
        self.busy_timeout = busy_timeout
        try:
            if not self.in_memory:
                _create_private_file(self.path)
            self._conn = self._connect()
            if not self.in_memory:
                self._conn.execute("PRAGMA journal_mode=WAL")  # (kept in the file)
            self._open_schema()
        except sqlite3.Error as e:
            why = explain_sqlite_error(self.path, e, busy_timeout)
            raise StoreError(f"cannot open {why}") from e
        except OSError as e:
            raise StoreError(f"cannot open kernel store {self.path}: {e}") from e

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            str(self.path), timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout={int(self.busy_timeout * 1000)}")
        if not self.in_memory:
            # FULL: a committed transaction survives even an OS crash, not just ours.
            conn.execute("PRAGMA synchronous=FULL")
        return conn

    def _after_fork(self) -> None:
        """A file store gets a connection of its own (SQLite connections must not cross
        a fork); an in-memory one keeps its copy, which is the child's alone."""
        super()._after_fork()
        if not self.in_memory:
            _inherited.append(self._conn)  # never closed from the child
            self._conn = self._connect()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._conn)

    def _read_transaction(self) -> _Transaction:
        return _Transaction(self._conn, "BEGIN DEFERRED")

    def _select(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        # Outside a transaction: readers never wait for the write lock.
        return self._conn.execute(sql, params).fetchall()

    def _explain(self, error: Exception) -> str | None:
        if isinstance(error, sqlite3.Error):
            return explain_sqlite_error(self.path, error, self.busy_timeout)
        return None

    def _is_duplicate(self, error: Exception) -> bool:
        return isinstance(error, sqlite3.IntegrityError)

    def integrity_check(self) -> str:
        """SQLite's own verdict on the file ('ok' when nothing is corrupt)."""
        return str(self._run(lambda: self._conn.execute("PRAGMA integrity_check").fetchone()[0]))

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# Connections a forked child inherited, kept so that they are never closed from it.
_inherited: list[Any] = []
