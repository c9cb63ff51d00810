"""Store faults with real parts: a file another writer holds locked for 10 s, a full disk
(a small tmpfs), a read-only file system. Each gives a one-line error naming the
fault, leaves no kernel behind from the failed start, corrupts nothing (SQLite's own
integrity check), and the kernels already running keep running."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import procinfo
from orchestrator.store import SQLiteKernelStore

from .conftest import kernel_pids_under

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
CLI = str(Path(sys.executable).with_name("kernel-orchestrator"))


def ko(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "--store", f"sqlite://{store}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def one_line_error(result: subprocess.CompletedProcess[str], text: str) -> None:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], result.stderr


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    options = "size=4m,mode=0700"
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def running_kernel(store: Path) -> tuple[str, int]:
    started = ko(store, "start", "python3")
    assert started.returncode == 0, started.stderr
    kernel_id = started.stdout.strip()
    assert ko(store, "exec", kernel_id, "kept = 'yes'").returncode == 0
    import asyncio

    s = SQLiteKernelStore(store)
    try:
        record = asyncio.run(s.get(kernel_id))
    finally:
        s.close()  # nothing of ours holds the file open (a read-only remount needs that)
    assert record is not None
    return kernel_id, int(record.provisioner_info["pid"])


def integrity(store: Path) -> str:
    s = SQLiteKernelStore(store)
    try:
        return s.integrity_check()
    finally:
        s.close()


LOCKER = textwrap.dedent(
    """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("ROLLBACK")
    """
)


def test_store_locked_by_another_writer(jupyter_env: dict[str, str], tmp_path: Path) -> None:
    store = tmp_path / "kernels.db"
    kernel_id, pid = running_kernel(store)
    root = Path(jupyter_env["JUPYTER_RUNTIME_DIR"]).parent
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(store), "20"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
        one_line_error(ko(store, "start", "python3"), "is locked by another process")
        assert locker.poll() is None  # the error came while the lock was held: no hang
        assert kernel_pids_under(root) == [pid]  # the failed start left nothing
    finally:
        locker.wait(60)
    # Once the other writer is done, the same kernel is driven as before.
    assert ko(store, "exec", kernel_id, "print(kept)").stdout == "yes\n"
    assert integrity(store) == "ok"
    assert procinfo.is_running(pid)
    assert ko(store, "shutdown", kernel_id).returncode == 0


def test_store_on_a_full_disk(jupyter_env: dict[str, str], small_disk: Path) -> None:
    store = small_disk / "kernels.db"
    kernel_id, pid = running_kernel(store)
    root = Path(jupyter_env["JUPYTER_RUNTIME_DIR"]).parent
    filler = small_disk / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    one_line_error(ko(store, "start", "python3"), "the disk is full")
    assert kernel_pids_under(root) == [pid]
    assert procinfo.is_running(pid)
    filler.unlink()
    assert integrity(store) == "ok"
    assert ko(store, "exec", kernel_id, "print(kept)").stdout == "yes\n"
    assert ko(store, "shutdown", kernel_id).returncode == 0
    assert kernel_pids_under(root) == []


def test_store_on_a_read_only_file_system(jupyter_env: dict[str, str], small_disk: Path) -> None:
    store = small_disk / "kernels.db"
    kernel_id, pid = running_kernel(store)
    root = Path(jupyter_env["JUPYTER_RUNTIME_DIR"]).parent
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        one_line_error(ko(store, "start", "python3"), "Read-only file system")
        assert kernel_pids_under(root) == [pid]
        assert procinfo.is_running(pid)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    assert integrity(store) == "ok"
    assert ko(store, "exec", kernel_id, "print(kept)").stdout == "yes\n"
    assert ko(store, "shutdown", kernel_id).returncode == 0
