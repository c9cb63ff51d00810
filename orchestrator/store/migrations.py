"""Versioned schema migrations for the SQL stores.

A store's schema version lives in its ``meta`` table. Opening a store applies, in one
transaction, every migration above that version, so an older store file (or database)
is brought up to date in place and a process never runs against a half-migrated
schema. A store newer than this code is refused rather than misread. PostgreSQL
takes an advisory lock first, so replicas starting together migrate one at a time.

Both databases go through the same versions; only the column types differ (a
PostgreSQL ``REAL`` is single precision, too coarse for a timestamp).
"""

from __future__ import annotations

from typing import Any

from ..errors import StoreError


def _schema(real: str, json_field: str, json_int: str) -> dict[int, tuple[str, ...]]:
    """The migrations, given the type of a timestamp and how to read a JSON label and a
    JSON integer of the payload."""
    return {
        1: (
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
            "CREATE TABLE IF NOT EXISTS kernels ("
            " kernel_id TEXT PRIMARY KEY, kernel_name TEXT NOT NULL,"
            f" provisioner_name TEXT NOT NULL, created {real} NOT NULL,"
            f" last_activity {real} NOT NULL, data TEXT NOT NULL)",
        ),
        # Ownership: the holder, its lease, and the generation that fences stale owners.
        2: (
            "ALTER TABLE kernels ADD COLUMN owner_id TEXT",
            "ALTER TABLE kernels ADD COLUMN owner_info TEXT",
            f"ALTER TABLE kernels ADD COLUMN lease_expires {real} NOT NULL DEFAULT 0",
            "ALTER TABLE kernels ADD COLUMN generation INTEGER NOT NULL DEFAULT 0",
            "CREATE INDEX IF NOT EXISTS kernels_owner ON kernels(owner_id)",
        ),
        # Counting across replicas: whose kernel it is, which pool holds it, and the
        # slots reserved by starts under way.
        3: (
            "ALTER TABLE kernels ADD COLUMN tenant TEXT",
            "ALTER TABLE kernels ADD COLUMN pool TEXT",
            f"UPDATE kernels SET tenant=NULLIF({json_field.format('owner')}, ''),"
            f" pool=NULLIF({json_field.format('pool')}, '')",
            "CREATE INDEX IF NOT EXISTS kernels_tenant ON kernels(tenant)",
            "CREATE INDEX IF NOT EXISTS kernels_pool ON kernels(pool)",
            "CREATE TABLE IF NOT EXISTS reservations (kernel_id TEXT PRIMARY KEY,"
            f" tenant TEXT, pool TEXT, expires {real} NOT NULL)",
        ),
        # Store traffic proportional to change: the restart count as a column, read with
        # the owners in one small query per interval, and a change count for listings.
        # Upgrade every replica together: one of an older version writes neither, so
        # the others' listings and restart-following would lag behind its changes.
        4: (
            "ALTER TABLE kernels ADD COLUMN restarts INTEGER NOT NULL DEFAULT 0",
            f"UPDATE kernels SET restarts=COALESCE({json_int.format('restarts')}, 0)",
            # Listings served from a cache: a count every write of a record bumps.
            "CREATE TABLE IF NOT EXISTS changes (id INTEGER PRIMARY KEY, counter BIGINT NOT NULL)",
            "INSERT INTO changes(id, counter) VALUES (1, 0)",
        ),
    }


SQLITE_MIGRATIONS = _schema(
    "REAL", "json_extract(data, '$.labels.{}')", "CAST(json_extract(data, '$.{}') AS INTEGER)"
)
POSTGRES_MIGRATIONS = _schema(
    "DOUBLE PRECISION", "(data::jsonb #>> '{{labels,{}}}')", "(data::jsonb ->> '{}')::integer"
)

# Any constant: the advisory lock PostgreSQL replicas take while migrating.
_MIGRATION_LOCK = 0x6B6F5354


def current_version(store: Any, cur: Any) -> int:
    """The schema version recorded in ``meta`` (0 for an empty database)."""
    if not store._exec(cur, store.dialect.table_exists, ("meta",)).fetchone():
        return 0
    row = store._exec(cur, "SELECT value FROM meta WHERE key='schema'").fetchone()
    return int(row[0]) if row else 0


def migrate(store: Any, cur: Any) -> int:
    """Apply the migrations ``store`` lacks, inside the caller's transaction; the version."""
    migrations: dict[int, tuple[str, ...]] = store.migrations
    if store.dialect.name == "postgresql":
        store._exec(cur, "SELECT pg_advisory_xact_lock(?)", (_MIGRATION_LOCK,))
    latest = max(migrations)
    version = current_version(store, cur)
    if version > latest:
        raise StoreError(
            f"the kernel store has schema version {version}, newer than this"
            f" kernel-orchestrator supports ({latest}); upgrade kernel-orchestrator"
        )
    for step in range(version + 1, latest + 1):
        for statement in migrations[step]:
            store._exec(cur, statement)
        store._exec(
            cur,
            "INSERT INTO meta(key, value) VALUES ('schema', ?)"
            " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (str(step),),
        )
    return latest
