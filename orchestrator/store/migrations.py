"""Versioned schema migrations for the SQL stores.

A store's schema version lives in its ``meta`` table. Opening a store applies, in one
transaction, every migration above that version, so an older store file (or database)
is brought up to date in place and a process never runs against a half-migrated
schema. A store newer than this code is refused rather than misread.
"""

from __future__ import annotations

from typing import Any

from ..errors import StoreError

# version -> statements that take a store from version - 1 to version.
SQLITE_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        "CREATE TABLE IF NOT EXISTS kernels ("
        " kernel_id TEXT PRIMARY KEY, kernel_name TEXT NOT NULL,"
        " provisioner_name TEXT NOT NULL, created REAL NOT NULL,"
        " last_activity REAL NOT NULL, data TEXT NOT NULL)",
    ),
    # Ownership: the holder, its lease, and the generation that fences stale owners.
    2: (
        "ALTER TABLE kernels ADD COLUMN owner_id TEXT",
        "ALTER TABLE kernels ADD COLUMN owner_info TEXT",
        "ALTER TABLE kernels ADD COLUMN lease_expires REAL NOT NULL DEFAULT 0",
        "ALTER TABLE kernels ADD COLUMN generation INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX IF NOT EXISTS kernels_owner ON kernels(owner_id)",
    ),
}


def current_version(cur: Any) -> int:
    """The schema version recorded in ``meta`` (0 for an empty database)."""
    has_meta = cur.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name='meta'"
    ).fetchone()
    if not has_meta:
        return 0
    row = cur.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    return int(row[0]) if row else 0


def migrate(cur: Any, migrations: dict[int, tuple[str, ...]]) -> int:
    """Apply the migrations the store lacks, inside the caller's transaction; the new version."""
    latest = max(migrations)
    version = current_version(cur)
    if version > latest:
        raise StoreError(
            f"the kernel store has schema version {version}, newer than this"
            f" kernel-orchestrator supports ({latest}); upgrade kernel-orchestrator"
        )
    for step in range(version + 1, latest + 1):
        for statement in migrations[step]:
            cur.execute(statement)
        cur.execute(
            "INSERT INTO meta(key, value) VALUES ('schema', ?)"
            " ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (str(step),),
        )
    return latest
