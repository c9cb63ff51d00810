"""Restore and back-end isolation faults: a failed restore is retried with backoff and
poisons nothing; jupyter_client's default-provisioner setting is respected."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.provisioning import KernelProvisionerFactory

import orchestrator
from orchestrator.errors import StoreError
from orchestrator.provisioning import provisioner_stanza
from orchestrator.store import SQLiteKernelStore

from .helpers import start_kernels_elsewhere


class OutageStore(SQLiteKernelStore):
    """The real SQLite store, whose listing fails like an outage for its first reads.

    (The thing under test is the manager's retry; SQLite itself offers no way to lock
    readers out of a file another connection already has open in WAL mode.)
    """

    failures = 3

    async def list(self):  # type: ignore[no-untyped-def, override]
        if self.failures > 0:
            self.failures -= 1
            raise StoreError(f"kernel store {self.path}: unable to open database file")
        return await super().list()


async def test_failed_restore_is_retried_and_poisons_nothing(
    jupyter_env: dict[str, str], store_url: str
) -> None:
    kernels, _ = start_kernels_elsewhere(1, code="kept = 7")
    store = OutageStore(store_url[len("sqlite://") :])
    mkm: Any = None
    try:
        mkm = orchestrator.AsyncMultiKernelManager(kernel_store=store, restore_max_backoff=1.0)
        deadline = time.monotonic() + 10
        while not mkm.restore_error and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert "unable to open database file" in mkm.restore_error
        # Later calls are not poisoned by the failing restore: they go ahead.
        assert await mkm.restored() is None
        new = await mkm.start_kernel(kernel_name="python3")
        report = await asyncio.wait_for(mkm.restore_kernels(), 30)
        assert report.reattached == [kernels[0]["id"]]
        assert mkm.restore_error == "" and mkm.restore_attempts == 4
        assert set(mkm.list_kernel_ids()) == {kernels[0]["id"], new}
        km = mkm.get_kernel(kernels[0]["id"])
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=30)
            out: list[str] = []
            await kc.execute_interactive(
                "print(kept)",
                timeout=30,
                output_hook=lambda m: out.append(m["content"].get("text", "")),
            )
            assert "".join(out) == "7\n"
        finally:
            kc.stop_channels()
    finally:
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


async def test_connection_files_stay_out_of_the_working_directory(
    jupyter_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """jupyter_client's multi-kernel manager writes connection files (holding the
    kernel's key) into the working directory by default; ours, starting and
    restoring alike, keeps them in the private runtime dir."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    first = orchestrator.AsyncMultiKernelManager()
    kernel_id = await first.start_kernel(kernel_name="python3")
    second: Any = None
    try:
        second = orchestrator.AsyncMultiKernelManager()
        report = await asyncio.wait_for(second.restore_kernels(), 30)
        assert report.reattached == [kernel_id]
        runtime = Path(jupyter_env["JUPYTER_RUNTIME_DIR"])
        for mkm in (first, second):
            path = Path(mkm.get_kernel(kernel_id).connection_file)
            assert path.parent == runtime and path.stat().st_mode & 0o077 == 0
        assert list(cwd.iterdir()) == []
    finally:
        await first.shutdown_kernel(kernel_id, now=True)
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("manager_class", ["MultiKernelManager", "AsyncMultiKernelManager"])
def test_a_collected_manager_leaves_its_contexts_sockets_alone(manager_class: str) -> None:
    """jupyter_client destroys a manager's own zmq context when the manager is collected.
    The collector runs that on any thread, and when the context's sockets are in use
    elsewhere ``term()`` never returns (a deadlock seen under the kernel store's lock).
    Ours share the process-wide context, so collecting a manager closes nothing."""
    mkm: Any = getattr(orchestrator, manager_class)()
    socket = mkm.context.socket(zmq.SUB)
    try:
        del mkm
        gc.collect()
        assert not socket.closed and not socket.context.closed
    finally:
        socket.close(linger=0)
