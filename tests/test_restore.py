"""Restore and back-end isolation faults: a failed restore is retried with backoff and
poisons nothing; jupyter_client's default-provisioner setting is respected."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.provisioning import KernelProvisionerFactory

import orchestrator
from orchestrator.errors import StoreError
from orchestrator.provisioning import provisioner_stanza
from orchestrator.store import SQLiteKernelStore

from .helpers import start_kernels_elsewhere

# Holds the store file so that nobody else may even read it (SQLite's exclusive locking
# mode), for argv[2] seconds.
LOCK_OUT = textwrap.dedent(
    """
    import sqlite3, sys, time
    conn = sqlite3.connect(sys.argv[1], isolation_level=None)
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    conn.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    conn.execute("COMMIT")
    """
)


async def test_failed_restore_is_retried_and_poisons_nothing(
    jupyter_env: dict[str, str], store_url: str
) -> None:
    kernels, _ = start_kernels_elsewhere(1, code="kept = 7")
    path = store_url[len("sqlite://") :]
    store = SQLiteKernelStore(path, busy_timeout=0.3)
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCK_OUT, path, "4"], stdout=subprocess.PIPE, text=True
    )
    mkm: Any = None
    try:
        assert locker.stdout is not None and locker.stdout.readline() == "locked\n"
        mkm = orchestrator.AsyncMultiKernelManager(kernel_store=store, restore_max_backoff=0.5)
        deadline = time.monotonic() + 10
        while "locked" not in mkm.restore_error and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert "is locked by another process" in mkm.restore_error
        started = time.monotonic()
        assert await mkm.restored() is None  # does not wait on a failing restore
        assert time.monotonic() - started < 1
        with pytest.raises(StoreError, match="is locked by another process"):
            await mkm.start_kernel(kernel_name="python3")  # a clear error of its own
        assert locker.wait(30) == 0
        report = await asyncio.wait_for(mkm.restore_kernels(), 30)
        assert report.reattached == [kernels[0]["id"]]
        assert mkm.restore_error == "" and mkm.restore_attempts > 1
        new = await mkm.start_kernel(kernel_name="python3")
        assert set(mkm.list_kernel_ids()) == {kernels[0]["id"], new}
    finally:
        if locker.poll() is None:
            locker.kill()
        if mkm is not None:
            await mkm.shutdown_all(now=True)
        store.close()


def test_default_provisioner_setting_is_respected() -> None:
    factory = KernelProvisionerFactory.instance()
    before = factory.default_provisioner_name
    spec = KernelSpec(argv=["python"], display_name="plain", language="python")
    try:
        factory.default_provisioner_name = "ssh-provisioner"
        assert provisioner_stanza(spec) == ("ssh-provisioner", {})
    finally:
        factory.default_provisioner_name = before
    assert provisioner_stanza(spec) == (before, {})


def test_kernel_ids_from_another_process_cannot_be_reused(
    jupyter_env: dict[str, str], store: Any, tmp_path: Path
) -> None:
    kernels, _ = start_kernels_elsewhere(1)
    km = orchestrator.KernelManager(kernel_name="python3", kernel_store=store)
    with pytest.raises(orchestrator.OrchestratorError, match="already in use"):
        km.start_kernel(kernel_id=kernels[0]["id"])
    asyncio.run(orchestrator.attach(kernels[0]["id"], store=store)).detach()
    subprocess.run(
        [str(Path(sys.executable).with_name("kernel-orchestrator")), "shutdown", kernels[0]["id"]],
        check=True,
        capture_output=True,
    )
