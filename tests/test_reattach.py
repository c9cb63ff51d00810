"""Re-attaching to kernels across orchestrator processes, and cleaning up after dead ones."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import orchestrator
from orchestrator import procinfo

from .helpers import start_kernels_elsewhere

pytestmark = pytest.mark.usefixtures("jupyter_env")


async def _exec(km: Any, code: str) -> dict[str, Any]:
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=30)
        outputs: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                outputs.append(msg["content"]["text"])

        reply = await kc.execute_interactive(code, timeout=60, output_hook=hook)
        return {"status": reply["content"]["status"], "out": "".join(outputs)}
    finally:
        kc.stop_channels()


async def test_multikernel_manager_reattaches_with_state(store: Any) -> None:
    kernels, _ = start_kernels_elsewhere(2, code="secret = 6 * 7")
    mkm = orchestrator.AsyncMultiKernelManager(kernel_store=store)
    report = await mkm.restore_kernels()
    assert sorted(report.reattached) == sorted(k["id"] for k in kernels)
    try:
        for k in kernels:
            km = mkm.get_kernel(k["id"])
            assert km.provisioner.pid == k["pid"]  # the same process: not restarted
            assert await km.is_alive()
            result = await _exec(km, "print(secret)")
            assert result["out"] == "42\n"
    finally:
        await mkm.shutdown_all()
    assert await store.list() == []
    assert not any(procinfo.is_running(k["pid"]) for k in kernels)


async def test_reattach_after_kill_9_of_the_orchestrator(store: Any) -> None:
    """The orchestrator dies mid-work; its kernels, even a busy one, are re-attached."""
    kernels, proc = start_kernels_elsewhere(2, code="import threading, time\nn = 5", hang=True)
    busy = kernels[0]
    # Make one kernel busy with a long cell, from a throwaway client.
    km0 = await orchestrator.attach(busy["id"], store=store)
    kc = km0.client()
    kc.start_channels()
    await kc.wait_for_ready(timeout=30)
    kc.execute("import time\nfor i in range(600): time.sleep(0.1)")
    await asyncio.sleep(0.5)
    kc.stop_channels()
    km0.detach()

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.stdout is not None
    proc.stdout.close()

    mkm = orchestrator.AsyncMultiKernelManager(kernel_store=store, reattach_timeout=5)
    report = await mkm.restore_kernels()
    try:
        assert sorted(report.reattached) == sorted(k["id"] for k in kernels), report
        km = mkm.get_kernel(busy["id"])
        await km.interrupt_kernel()
        result = await _exec(km, "print(n * 2)")
        assert result["out"] == "10\n"
    finally:
        await mkm.shutdown_all(now=True)


async def test_dead_kernel_records_are_cleaned_up(store: Any, jupyter_env: dict[str, str]) -> None:
    kernels, _ = start_kernels_elsewhere(1)
    k = kernels[0]
    record = await store.get(k["id"])
    assert record is not None
    log_path = Path(record.provisioner_info["log_path"])
    assert log_path.exists() and Path(record.connection_file).exists()
    os.kill(k["pid"], signal.SIGKILL)
    for _ in range(100):
        if not procinfo.is_running(k["pid"]):
            break
        await asyncio.sleep(0.05)

    mkm = orchestrator.AsyncMultiKernelManager(kernel_store=store)
    report = await mkm.restore_kernels()
    assert report.removed == [k["id"]] and not report.reattached
    assert await store.get(k["id"]) is None
    assert not log_path.exists()
    assert not Path(record.connection_file).exists()
    assert mkm.list_kernel_ids() == []


async def test_unresponsive_kernel_is_reported_not_adopted(
    store: Any, caplog: pytest.LogCaptureFixture
) -> None:
    kernels, _ = start_kernels_elsewhere(1)
    k = kernels[0]
    os.kill(k["pid"], signal.SIGSTOP)
    try:
        mkm = orchestrator.AsyncMultiKernelManager(kernel_store=store, reattach_timeout=1)
        with caplog.at_level("WARNING"):
            report = await mkm.restore_kernels()
        assert list(report.failed) == [k["id"]]
        assert "did not answer kernel_info within 1s" in report.failed[k["id"]]
        assert f"kernel {k['id']} (python3) could not be re-attached" in caplog.text
        assert await store.get(k["id"]) is not None  # kept: it may recover
    finally:
        os.kill(k["pid"], signal.SIGCONT)
    km = await orchestrator.attach(k["id"], store=store)
    await km.shutdown_kernel(now=True)


async def test_pid_reuse_is_not_mistaken_for_the_kernel(store: Any) -> None:
    """A record whose pid now belongs to another process must not adopt (or signal) it."""
    kernels, _ = start_kernels_elsewhere(1)
    k = kernels[0]
    record = await store.get(k["id"])
    assert record is not None
    km = await orchestrator.attach(k["id"], store=store)
    await km.shutdown_kernel(now=True)

    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record.provisioner_info["pid"] = bystander.pid
        record.provisioner_info["pgid"] = bystander.pid
        await store.save(record)
        with pytest.raises(orchestrator.KernelGoneError):
            await orchestrator.attach(k["id"], store=store)
        assert bystander.poll() is None  # untouched
        assert await store.get(k["id"]) is None
    finally:
        bystander.kill()
        bystander.wait()


async def test_restart_after_reattach_keeps_id_and_ports(store: Any) -> None:
    kernels, _ = start_kernels_elsewhere(1, code="x = 1")
    km = await orchestrator.attach(kernels[0]["id"], store=store)
    ports = (km.shell_port, km.iopub_port, km.stdin_port, km.hb_port, km.control_port)
    await km.restart_kernel()
    try:
        assert km.kernel_id == kernels[0]["id"]
        assert (km.shell_port, km.iopub_port, km.stdin_port, km.hb_port, km.control_port) == ports
        assert km.provisioner.pid != kernels[0]["pid"]
        assert not procinfo.is_running(kernels[0]["pid"])
        result = await _exec(km, "print('x' in dir())")
        assert result["out"] == "False\n"
        record = await store.get(km.kernel_id)
        assert record is not None and record.restarts == 1
        assert record.provisioner_info["pid"] == km.provisioner.pid
    finally:
        await km.shutdown_kernel()


async def test_restart_after_reattach_keeps_the_environment_the_kernel_was_given(
    store: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel started with an explicit environment (as the gateway starts them) gets
    that same environment back when another manager restarts it, never the restarting
    process's other variables (its tokens, its store's URL)."""
    monkeypatch.setenv("KO_TEST_ORCHESTRATOR_SECRET", "s3cret")
    given = {"PATH": os.environ["PATH"], "CHOSEN": "yes"}
    first = orchestrator.AsyncKernelManager(kernel_name="python3", kernel_store=store)
    await first.start_kernel(env=given)
    kernel_id = first.kernel_id
    first.detach()
    km = await orchestrator.attach(kernel_id, store=store)
    try:
        await km.restart_kernel()
        names = "('PATH', 'CHOSEN', 'KO_TEST_ORCHESTRATOR_SECRET')"
        code = f"import os; print(sorted(k for k in {names} if k in os.environ))"
        result = await _exec(km, code)
        assert result["out"] == "['CHOSEN', 'PATH']\n"
        record = await store.get(kernel_id)
        assert "s3cret" not in repr(record.launch_args)
    finally:
        await km.shutdown_kernel()


def test_sync_multikernel_manager_restores_on_construction(store: Any) -> None:
    kernels, _ = start_kernels_elsewhere(1)
    mkm = orchestrator.MultiKernelManager(kernel_store=store)
    assert mkm.list_kernel_ids() == [kernels[0]["id"]]
    assert mkm.is_alive(kernels[0]["id"])
    mkm.shutdown_all(now=True)
    assert not procinfo.is_running(kernels[0]["pid"])


async def test_async_multikernel_manager_restores_when_loop_runs(store: Any) -> None:
    kernels, _ = start_kernels_elsewhere(1)
    mkm = orchestrator.AsyncMultiKernelManager(kernel_store=store)
    report = await mkm.restored()
    assert report is not None and report.reattached == [kernels[0]["id"]]
    new_id = await mkm.start_kernel(kernel_name="python3")
    assert sorted(mkm.list_kernel_ids()) == sorted([kernels[0]["id"], new_id])
    await mkm.shutdown_all(now=True)
    assert await store.list() == []
