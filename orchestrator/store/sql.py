"""The kernel store on an SQL database, written once for SQLite and PostgreSQL.

Every operation is one short transaction whose SQL both databases understand; what
differs between them (placeholders, row locks, how a table is locked, the name of
``max`` of two values) is a :class:`Dialect`. A subclass only opens connections,
runs transactions and explains its driver's errors.

Writes that decide something (a claim, a fenced save, a reservation against a limit)
read and write inside one transaction that holds the rows it read: SQLite by taking
the database's write lock first (``BEGIN IMMEDIATE``), PostgreSQL by ``FOR UPDATE``
row locks and, for reservations, a table lock. So two processes, or two gateway
replicas on two machines, can never both win the same claim or the last free slot.

Lease and reservation times are the *database's* clock (``Dialect.now``): written as
its now plus the lease in the statement that writes them, judged against its now in
the statement that reads them, and handed to this process as time *left*, which is
added to this process's own clock. Processes on machines whose clocks disagree (by
more than a lease, even) therefore agree on whose lease is live.
"""

from __future__ import annotations

import abc
import builtins
import contextlib
import json
import threading
import time
import weakref
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from ..errors import OrchestratorError, StoreError, UnknownKernelError
from ..executors import run_blocking
from ..forks import reset_in_child
from .base import (
    NO_LIMITS,
    KernelStore,
    Limits,
    fenced,
    granted_generation,
    limit_checks,
    limit_refusal,
    refusal,
)
from .lease import Holder, Lease, Ownership
from .migrations import migrate
from .record import POOL_LABEL, TENANT_LABEL, KernelRecord

T = TypeVar("T")


@dataclass(frozen=True)
class Dialect:
    """What differs between the SQL of the databases we store kernels in."""

    name: str
    placeholder: str  # the driver's parameter marker
    greatest: str  # the larger of two values
    for_update: str  # suffix of a SELECT that locks the rows it returns
    skip_locked: str  # ... and skips rows another transaction has locked
    lock_reservations: str  # serialise reservers ("" where the transaction already does)
    table_exists: str  # one row if the table named by the parameter exists
    now: str  # the database server's clock, in seconds since the epoch


class SQLKernelStore(KernelStore):
    """Kernel records, their leases and the start reservations, in SQL tables."""

    dialect: Dialect
    migrations: dict[int, tuple[str, ...]]

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._version = 0
        self._instance = ""
        _open_stores.add(self)

    def _after_fork(self) -> None:
        """In a forked child: a lock of its own (the parent's may have been held by one
        of its threads at the fork), and a connection of its own (see subclasses)."""
        self._lock = threading.Lock()

    # --------------------------------------------------- what a subclass provides
    @abc.abstractmethod
    def _transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A cursor inside a transaction that commits on success, rolls back on error."""

    @abc.abstractmethod
    def _explain(self, error: Exception) -> str | None:
        """One line naming what is wrong with the store for a driver error (None if
        ``error`` is not the driver's)."""

    @abc.abstractmethod
    def _is_duplicate(self, error: Exception) -> bool:
        """Whether ``error`` is a primary-key violation."""

    def _on_failure(self, error: Exception) -> None:
        """Called after a driver error (a server store drops a broken connection here)."""

    # ------------------------------------------------------------------ helpers
    def _q(self, sql: str) -> str:
        return (
            sql if self.dialect.placeholder == "?" else sql.replace("?", self.dialect.placeholder)
        )

    def _exec(self, cur: Any, sql: str, params: tuple[Any, ...] = ()) -> Any:
        if params:
            cur.execute(self._q(sql), params)
        else:
            cur.execute(sql)
        return cur

    def _open_schema(self) -> None:
        """Create or migrate the schema and read (or make) the deployment's instance id."""
        import uuid

        with self._transaction() as cur:
            self._version = migrate(self, cur)
            self._exec(
                cur,
                "INSERT INTO meta(key, value) VALUES ('instance', ?) ON CONFLICT(key) DO NOTHING",
                (uuid.uuid4().hex[:12],),
            )
            row = self._exec(cur, "SELECT value FROM meta WHERE key='instance'").fetchone()
        self._instance = str(row[0])

    def _run(self, fn: Callable[[], T]) -> T:
        with self._lock:
            try:
                return fn()
            except OrchestratorError:
                raise
            except Exception as e:
                why = self._explain(e)
                if why is None:
                    raise
                self._on_failure(e)
                raise StoreError(why) from e

    async def _call(self, fn: Callable[[], T]) -> T:
        return await run_blocking("store", self._run, fn)

    @property
    def _columns(self) -> str:
        """A record's columns; its lease as seconds left on the database's clock."""
        return (
            f"data, last_activity, owner_info, lease_expires - {self.dialect.now},"
            " generation, tenant"
        )

    @property
    def _select_all(self) -> str:
        return f"SELECT {self._columns} FROM kernels ORDER BY created, kernel_id"

    def _read_transaction(self) -> contextlib.AbstractContextManager[Any]:
        """A transaction that only reads (SQLite: without the write lock)."""
        return self._transaction()

    def _select(self, sql: str, params: tuple[Any, ...] = ()) -> builtins.list[tuple[Any, ...]]:
        with self._transaction() as cur:
            return list(self._exec(cur, sql, params).fetchall())

    @staticmethod
    def _from_row(row: tuple[Any, ...]) -> KernelRecord:
        data, last_activity, owner_info, lease_left, generation, tenant = row
        record = KernelRecord.from_json_dict(json.loads(data))
        record.last_activity = max(record.last_activity, float(last_activity))
        record.owner = json.loads(owner_info) if owner_info else {}
        record.lease_expires = _local_expiry(owner_info, lease_left)
        record.generation = int(generation or 0)
        if tenant:  # handed out from a pool by another process: the column is the truth
            record.labels = {k: v for k, v in record.labels.items() if k != POOL_LABEL}
            record.labels[TENANT_LABEL] = tenant
        return record

    def _ownership(self, cur: Any, kernel_id: str) -> Ownership | None:
        row = self._exec(
            cur,
            f"SELECT owner_info, lease_expires - {self.dialect.now}, generation FROM kernels"
            " WHERE kernel_id=?" + self.dialect.for_update,
            (kernel_id,),
        ).fetchone()
        return None if row is None else self._ownership_from(*row)

    @staticmethod
    def _ownership_from(owner_info: str | None, lease_left: Any, generation: Any) -> Ownership:
        """An :class:`Ownership` from the owner_info column, the lease's seconds left on
        the database's clock and the generation column (expiry on this process's clock)."""
        owner = Holder.from_dict(json.loads(owner_info)) if owner_info else None
        return Ownership(owner, _local_expiry(owner_info, lease_left), int(generation or 0))

    def _check(self, cur: Any, kernel_id: str, lease: Lease | None) -> bool:
        """Whether the row exists; raises if ``lease`` (or, without one, a live owner)
        forbids writing it."""
        own = self._ownership(cur, kernel_id)
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

    @staticmethod
    def _payload(record: KernelRecord) -> str:
        data = record.to_json_dict()
        for key in ("owner", "lease_expires", "generation"):
            data.pop(key, None)  # the columns hold these
        return json.dumps(data, separators=(",", ":"))

    @staticmethod
    def _tenant_pool(record: KernelRecord) -> tuple[str | None, str | None]:
        labels = record.labels or {}
        return labels.get(TENANT_LABEL) or None, labels.get(POOL_LABEL) or None

    def _insert_row(
        self, cur: Any, record: KernelRecord, owner: Holder | None, lease_seconds: float
    ) -> None:
        """A new row: owned by ``owner`` for ``lease_seconds`` (generation 1), or unowned
        (generation 0)."""
        tenant, pool = self._tenant_pool(record)
        expires = f"{self.dialect.now} + ?" if owner else "?"
        self._exec(
            cur,
            "INSERT INTO kernels(kernel_id, kernel_name, provisioner_name, created,"
            " last_activity, data, owner_id, owner_info, lease_expires, generation, tenant, pool,"
            f" restarts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, {expires}, ?, ?, ?, ?)",
            (
                record.kernel_id,
                record.kernel_name,
                record.provisioner_name,
                record.created,
                record.last_activity,
                self._payload(record),
                owner.holder_id if owner else None,
                json.dumps(owner.to_dict()) if owner else None,
                lease_seconds if owner else 0.0,
                1 if owner else 0,
                tenant,
                pool,
                int(record.restarts),
            ),
        )
        self._exec(cur, "DELETE FROM reservations WHERE kernel_id=?", (record.kernel_id,))
        self._changed(cur)

    # --------------------------------------------------------------- interface
    @property
    def instance_id(self) -> str:
        return self._instance

    @property
    def schema_version(self) -> int:
        return self._version

    async def insert(self, record: KernelRecord, holder: Holder, lease_seconds: float) -> Lease:
        def op() -> Lease:
            expires = time.time() + lease_seconds
            try:
                with self._transaction() as cur:
                    self._insert_row(cur, record, holder, lease_seconds)
            except Exception as e:
                if self._is_duplicate(e):
                    raise OrchestratorError(
                        f"kernel id {record.kernel_id!r} is already in use"
                    ) from None
                raise
            return Lease(record.kernel_id, holder.holder_id, 1, expires)

        return await self._call(op)

    def save_sync(self, record: KernelRecord, lease: Lease | None = None) -> None:
        def op() -> None:
            with self._transaction() as cur:
                if not self._check(cur, record.kernel_id, lease):
                    self._insert_row(cur, record, None, 0.0)
                    return
                tenant, pool = self._tenant_pool(record)
                self._exec(
                    cur,
                    "UPDATE kernels SET kernel_name=?, provisioner_name=?,"
                    f" last_activity={self.dialect.greatest}(last_activity, ?), data=?,"
                    " tenant=?, pool=?, restarts=? WHERE kernel_id=?",
                    (
                        record.kernel_name,
                        record.provisioner_name,
                        record.last_activity,
                        self._payload(record),
                        tenant,
                        pool,
                        int(record.restarts),
                        record.kernel_id,
                    ),
                )
                self._changed(cur)

        self._run(op)

    async def save(self, record: KernelRecord, lease: Lease | None = None) -> None:
        await run_blocking("store", self.save_sync, record, lease)

    async def get(self, kernel_id: str) -> KernelRecord | None:
        rows = await self._call(
            lambda: self._select(
                f"SELECT {self._columns} FROM kernels WHERE kernel_id=?", (kernel_id,)
            )
        )
        return self._from_row(rows[0]) if rows else None

    async def list(self) -> builtins.list[KernelRecord]:
        rows = await self._call(lambda: self._select(self._select_all))
        return [self._from_row(row) for row in rows]

    async def delete(self, kernel_id: str, lease: Lease | None = None) -> bool:
        def op() -> bool:
            with self._transaction() as cur:
                if lease is not None and not self._check(cur, kernel_id, lease):
                    return False
                deleted = self._exec(cur, "DELETE FROM kernels WHERE kernel_id=?", (kernel_id,))
                if deleted.rowcount > 0:
                    self._changed(cur)
                    return True
                return False

        return await self._call(op)

    async def touch(self, kernel_id: str, when: float | None = None) -> None:
        stamp = when if when is not None else time.time()

        def op() -> None:
            with self._transaction() as cur:
                touched = self._exec(
                    cur,
                    "UPDATE kernels SET last_activity=? WHERE kernel_id=? AND last_activity < ?",
                    (stamp, kernel_id, stamp),
                )
                if touched.rowcount > 0:  # newer activity: a change listings show
                    self._changed(cur)

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
                self._set_owner(cur, kernel_id, holder, lease_seconds, generation)
            return Lease(kernel_id, holder.holder_id, generation, now + lease_seconds)

        return await self._call(op)

    def _set_owner(
        self, cur: Any, kernel_id: str, holder: Holder, lease_seconds: float, generation: int
    ) -> None:
        self._exec(
            cur,
            f"UPDATE kernels SET owner_id=?, owner_info=?, lease_expires={self.dialect.now} + ?,"
            " generation=? WHERE kernel_id=?",
            (holder.holder_id, json.dumps(holder.to_dict()), lease_seconds, generation, kernel_id),
        )

    async def renew(self, holder_id: str, lease_seconds: float) -> dict[str, int]:
        def op() -> dict[str, int]:
            with self._transaction() as cur:
                rows = self._exec(
                    cur,
                    f"UPDATE kernels SET lease_expires={self.dialect.now} + ? WHERE owner_id=?"
                    " RETURNING kernel_id, generation",
                    (lease_seconds, holder_id),
                ).fetchall()
            return {str(k): int(g) for k, g in rows}

        return await self._call(op)

    async def ownerships(self, kernel_ids: Collection[str] | None = None) -> dict[str, Ownership]:
        ids = None if kernel_ids is None else list(kernel_ids)
        if ids is not None and len(ids) > 500:  # (SQLite allows 999 parameters)
            ids = None  # one read of all beats several of some
        columns = (
            f"SELECT kernel_id, owner_info, lease_expires - {self.dialect.now},"
            " generation, restarts FROM kernels"
        )

        def op() -> dict[str, Ownership]:
            with self._read_transaction() as cur:
                if ids is None:
                    rows = self._exec(cur, columns).fetchall()
                else:
                    where = f" WHERE kernel_id IN ({', '.join('?' * len(ids))})"
                    rows = self._exec(cur, columns + where, tuple(ids)).fetchall()
            wanted = None if kernel_ids is None else set(kernel_ids)
            return {
                str(kernel_id): replace(
                    self._ownership_from(owner_info, left, generation),
                    restarts=int(restarts or 0),
                )
                for kernel_id, owner_info, left, generation, restarts in rows
                if wanted is None or kernel_id in wanted
            }

        return await self._call(op) if ids is None or ids else {}

    def _changed(self, cur: Any) -> None:
        """Count a change of the records (see :meth:`list_if_changed`)."""
        self._exec(cur, "UPDATE changes SET counter=counter+1 WHERE id=1")

    async def list_if_changed(
        self, seen: int | None
    ) -> tuple[int, builtins.list[KernelRecord] | None]:
        def op() -> tuple[int, builtins.list[KernelRecord] | None]:
            with self._read_transaction() as cur:
                count = int(self._exec(cur, "SELECT counter FROM changes WHERE id=1").fetchone()[0])
                if count == seen:
                    return count, None
                rows = self._exec(cur, self._select_all).fetchall()
            return count, [self._from_row(row) for row in rows]

        return await self._call(op)

    async def change_count(self) -> int:
        rows = await self._call(lambda: self._select("SELECT counter FROM changes WHERE id=1"))
        return int(rows[0][0])

    def release_now(self, lease: Lease) -> bool:
        def op() -> bool:
            with self._transaction() as cur:
                cur = self._exec(
                    cur,
                    "UPDATE kernels SET owner_id=NULL, owner_info=NULL, lease_expires=0"
                    " WHERE kernel_id=? AND owner_id=? AND generation=?",
                    (lease.kernel_id, lease.holder_id, lease.generation),
                )
                return bool(cur.rowcount > 0)

        return self._run(op)

    # ------------------------------------------------- limits, reservations, pools
    def _counts(self, cur: Any, tenant: str | None, pool: str | None) -> int:
        """Kernels (recorded or reserved) that count against the limit for
        ``tenant``/``pool``: a pool's unclaimed kernels for ``pool``, else the
        tenant's (``tenant``) or everyone's (both None) non-pooled kernels."""
        args: tuple[Any, ...]
        rargs: tuple[Any, ...]
        if pool is not None:
            where, args = "pool=? AND tenant IS NULL", (pool,)
            reserved, rargs = "pool=?", (pool,)
        elif tenant is not None:
            where, args = "tenant=?", (tenant,)
            reserved, rargs = "tenant=?", (tenant,)
        else:
            where, args = "(tenant IS NOT NULL OR pool IS NULL)", ()
            reserved, rargs = "pool IS NULL", ()
        recorded = self._exec(cur, f"SELECT COUNT(*) FROM kernels WHERE {where}", args).fetchone()
        pending = self._exec(
            cur,
            f"SELECT COUNT(*) FROM reservations WHERE {reserved} AND expires > {self.dialect.now}"
            " AND kernel_id NOT IN (SELECT kernel_id FROM kernels)",
            rargs,
        ).fetchone()
        return int(recorded[0]) + int(pending[0])

    def _check_limits(self, cur: Any, tenant: str | None, pool: str | None, limits: Limits) -> None:
        """Raise :class:`KernelLimitError` if one more kernel for ``tenant``/``pool``
        would exceed ``limits``. Serialised with every other check (the reservations
        lock, or SQLite's one writer), so the count stays true until the transaction
        that adds the kernel commits."""
        if self.dialect.lock_reservations:
            self._exec(cur, self.dialect.lock_reservations)
        self._exec(cur, f"DELETE FROM reservations WHERE expires <= {self.dialect.now}")
        for limit, who, which in limit_checks(tenant, pool, limits):
            if limit and self._counts(cur, who, which) >= limit:
                raise limit_refusal(limit, who, which)

    async def reserve(
        self,
        kernel_id: str,
        *,
        tenant: str | None,
        pool: str | None,
        limits: Limits,
        seconds: float,
    ) -> None:
        def op() -> None:
            with self._transaction() as cur:
                self._check_limits(cur, tenant, pool, limits)
                self._exec(
                    cur,
                    "INSERT INTO reservations(kernel_id, tenant, pool, expires)"
                    f" VALUES (?, ?, ?, {self.dialect.now} + ?)",
                    (kernel_id, tenant, pool, seconds),
                )

        await self._call(op)

    async def unreserve(self, kernel_id: str) -> None:
        def op() -> None:
            with self._transaction() as cur:
                self._exec(cur, "DELETE FROM reservations WHERE kernel_id=?", (kernel_id,))

        await self._call(op)

    async def count(self, *, tenant: str | None = None, pool: str | None = None) -> int:
        def op() -> int:
            with self._transaction() as cur:
                return self._counts(cur, tenant, pool)

        return await self._call(op)

    async def claim_pooled(
        self,
        pool: str,
        tenant: str,
        holder: Holder,
        lease_seconds: float,
        limits: Limits = NO_LIMITS,
    ) -> Lease | None:
        def op() -> Lease | None:
            with self._transaction() as cur:
                self._check_limits(cur, tenant or None, None, limits)
                row = self._exec(
                    cur,
                    "SELECT kernel_id, generation, owner_id FROM kernels"
                    " WHERE pool=? AND tenant IS NULL ORDER BY created, kernel_id LIMIT 1"
                    + self.dialect.skip_locked,
                    (pool,),
                ).fetchone()
                if row is None:
                    return None
                kernel_id, generation = str(row[0]), int(row[1] or 0)
                if row[2] != holder.holder_id:
                    generation += 1  # fences the replica that filled the pool
                expires = time.time() + lease_seconds
                self._set_owner(cur, kernel_id, holder, lease_seconds, generation)
                self._exec(
                    cur, "UPDATE kernels SET tenant=? WHERE kernel_id=?", (tenant, kernel_id)
                )
                self._changed(cur)
            return Lease(kernel_id, holder.holder_id, generation, expires)

        return await self._call(op)


def _local_expiry(owner_info: Any, lease_left: Any) -> float:
    """When a lease with ``lease_left`` seconds left (on the database's clock) ends, on
    this process's clock; 0 for a record nobody owns."""
    if not owner_info or lease_left is None:
        return 0.0
    return time.time() + float(lease_left)


# Every store of this process: a forked child gives each its own lock and connection.
_open_stores: weakref.WeakSet[SQLKernelStore] = weakref.WeakSet()


@reset_in_child
def _reset_after_fork() -> None:
    for store in list(_open_stores):
        with contextlib.suppress(Exception):  # it then fails on first use, saying why
            store._after_fork()
