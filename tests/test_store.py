"""The kernel store: round trips, permissions, concurrency and crash durability."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestrator.errors import StoreError
from orchestrator.store import KernelRecord, SQLiteKernelStore, open_store


def make_record(kernel_id: str, **extra: object) -> KernelRecord:
    return KernelRecord(
        kernel_id=kernel_id,
        kernel_name="python3",
        provisioner_name="orchestrator-local-provisioner",
        provisioner_info={
            "kernel_id": kernel_id,
            "connection_info": {"key": b"secret-key-bytes", "shell_port": 1234},
            "pid": 42,
        },
        labels={"owner": "alice"},
        **extra,  # type: ignore[arg-type]
    )


async def test_round_trip_keeps_bytes_and_labels(tmp_path: Path) -> None:
    store = SQLiteKernelStore(tmp_path / "k.db")
    await store.save(make_record("abc"))
    got = await store.get("abc")
    assert got is not None
    assert got.provisioner_info["connection_info"]["key"] == b"secret-key-bytes"
    assert got.labels == {"owner": "alice"}
    assert [r.kernel_id for r in await store.list()] == ["abc"]
    assert await store.delete("abc") is True
    assert await store.delete("abc") is False
    assert await store.get("abc") is None
    store.close()


async def test_touch_only_moves_activity_forward(tmp_path: Path) -> None:
    store = SQLiteKernelStore(tmp_path / "k.db")
    await store.save(make_record("abc", last_activity=100.0))
    await store.touch("abc", 200.0)
    await store.touch("abc", 150.0)
    got = await store.get("abc")
    assert got is not None and got.last_activity == 200.0
    # A later save with an older activity time does not move it back either.
    await store.save(make_record("abc", last_activity=120.0))
    got = await store.get("abc")
    assert got is not None and got.last_activity == 200.0
    store.close()


async def test_find_by_prefix(tmp_path: Path) -> None:
    store = SQLiteKernelStore(tmp_path / "k.db")
    for kid in ("aaa1", "aab2", "bbb3"):
        await store.save(make_record(kid))
    assert [r.kernel_id for r in await store.find("aa")] == ["aaa1", "aab2"]
    assert [r.kernel_id for r in await store.find("bbb3")] == ["bbb3"]
    assert await store.find("zz") == []
    store.close()


async def test_files_are_private(tmp_path: Path) -> None:
    path = tmp_path / "fresh" / "k.db"
    store = SQLiteKernelStore(path)
    await store.save(make_record("abc"))
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for p in path.parent.iterdir():  # the db and its -wal/-shm companions
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    store.close()


def test_loose_permissions_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    path.touch(mode=0o644)
    os.chmod(path, 0o644)
    SQLiteKernelStore(path).close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_public_dict_redacts_the_key() -> None:
    data = make_record("abc").public_dict()
    assert "secret-key-bytes" not in json.dumps(data)
    assert data["provisioner_info"]["connection_info"]["key"] == "<redacted>"


@pytest.mark.parametrize(
    "url, message",
    [
        ("sqlite:", "names no file"),
        ("mysql://db/x", "unsupported kernel store URL scheme 'mysql'"),
        ("sqlite:////proc/no/such/dir/k.db", "cannot open kernel store"),
    ],
)
def test_bad_urls_give_clear_errors(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        open_store(url)


def test_url_forms(tmp_path: Path) -> None:
    memory = open_store("memory:")
    assert isinstance(memory, SQLiteKernelStore) and memory.url == "memory:"
    s = open_store(f"sqlite:///{tmp_path}/a.db")
    assert isinstance(s, SQLiteKernelStore) and s.path == tmp_path / "a.db"
    s.close()
    s = open_store(str(tmp_path / "b.db"))
    assert isinstance(s, SQLiteKernelStore) and s.path == tmp_path / "b.db"
    s.close()


def test_instance_id_is_stable(tmp_path: Path) -> None:
    a = SQLiteKernelStore(tmp_path / "k.db")
    b = SQLiteKernelStore(tmp_path / "k.db")
    assert a.instance_id == b.instance_id and len(a.instance_id) == 12
    a.close()
    b.close()


def _writer(path: str, prefix: str, count: int) -> None:
    store = SQLiteKernelStore(path)
    for i in range(count):
        store.save_sync(make_record(f"{prefix}-{i:04d}"))
    store.close()


def test_concurrent_processes_do_not_corrupt(tmp_path: Path) -> None:
    path = str(tmp_path / "k.db")
    SQLiteKernelStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, f"p{n}", 150)) for n in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT COUNT(*) FROM kernels").fetchone()[0] == 600
    conn.close()


_CRASHING_WRITER = """
import sys, time
from orchestrator.store import SQLiteKernelStore, KernelRecord
store = SQLiteKernelStore(sys.argv[1])
i = 0
while True:
    store.save_sync(KernelRecord(kernel_id=f"k{i:06d}", kernel_name="python3",
                                 provisioner_name="x", provisioner_info={"blob": "x" * 4000}))
    print(i, flush=True)   # printed only after the commit returned
    i += 1
"""


def test_kill_9_mid_write_loses_nothing_committed(tmp_path: Path) -> None:
    path = tmp_path / "k.db"
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    committed = -1
    deadline = time.monotonic() + 60
    while committed < 300 and time.monotonic() < deadline:
        committed = int(proc.stdout.readline())
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    have = {row[0] for row in conn.execute("SELECT kernel_id FROM kernels")}
    conn.close()
    assert {f"k{i:06d}" for i in range(committed + 1)} <= have
    SQLiteKernelStore(path).close()  # and it opens again
