"""Interface parity: the same calls on our managers and jupyter_client's stock ones
behave the same. Every test runs once with each class and compares observations."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import jupyter_client
import nbformat
import pytest
from jupyter_client.ioloop import AsyncIOLoopKernelManager as StockAsyncIOLoopKM
from nbclient import NotebookClient

import orchestrator

ASYNC_PAIRS = [
    pytest.param(jupyter_client.AsyncKernelManager, id="stock"),
    pytest.param(orchestrator.AsyncKernelManager, id="ours"),
]
SYNC_PAIRS = [
    pytest.param(jupyter_client.KernelManager, id="stock"),
    pytest.param(orchestrator.KernelManager, id="ours"),
]

pytestmark = pytest.mark.usefixtures("jupyter_env")


async def _run(kc: Any, code: str, timeout: float = 30) -> dict[str, Any]:
    reply = await kc.execute_interactive(code, timeout=timeout, output_hook=lambda m: None)
    return reply["content"]  # type: ignore[no-any-return]


@pytest.mark.parametrize("cls", ASYNC_PAIRS)
async def test_async_lifecycle(cls: type) -> None:
    km = cls(kernel_name="python3")
    assert not km.has_kernel
    await km.start_kernel()
    try:
        assert km.has_kernel and await km.is_alive()
        await asyncio.wait_for(km.ready, 5)
        info = km.get_connection_info()
        assert {
            "shell_port",
            "iopub_port",
            "stdin_port",
            "hb_port",
            "control_port",
            "ip",
            "key",
            "transport",
            "signature_scheme",
        } <= set(info)
        assert os.path.exists(km.connection_file)
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=30)
        assert (await _run(kc, "state = 7"))["status"] == "ok"

        # interrupt a running cell
        msg_id = kc.execute("import time; time.sleep(30)")
        await asyncio.sleep(1.0)
        await km.interrupt_kernel()
        reply = await kc.get_shell_msg(timeout=10)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"

        # restart: same id and ports, fresh state
        kid, ports = km.kernel_id, (km.shell_port, km.iopub_port, km.control_port)
        await km.restart_kernel()
        assert km.kernel_id == kid
        assert (km.shell_port, km.iopub_port, km.control_port) == ports
        await kc.wait_for_ready(timeout=30)
        content = await _run(kc, "state")
        assert content["status"] == "error" and content["ename"] == "NameError"
        kc.stop_channels()
    finally:
        await km.shutdown_kernel()
    assert not km.has_kernel
    assert not await km.is_alive()
    assert not os.path.exists(km.connection_file)


@pytest.mark.parametrize("cls", SYNC_PAIRS)
def test_sync_lifecycle(cls: type) -> None:
    km = cls(kernel_name="python3")
    km.start_kernel()
    try:
        assert km.is_alive()
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=30)
        reply = kc.execute_interactive("x = 1", timeout=30, output_hook=lambda m: None)
        assert reply["content"]["status"] == "ok"
        km.restart_kernel(now=True)
        kc.wait_for_ready(timeout=30)
        reply = kc.execute_interactive("x", timeout=30, output_hook=lambda m: None)
        assert reply["content"]["ename"] == "NameError"
        kc.stop_channels()
    finally:
        km.shutdown_kernel(now=True)
    assert not km.is_alive()


@pytest.mark.parametrize("cls", ASYNC_PAIRS)
async def test_signal_kernel_and_cleanup(cls: type) -> None:
    km = cls(kernel_name="python3")
    await km.start_kernel()
    await km.signal_kernel(signal.SIGKILL)
    for _ in range(100):
        if not await km.is_alive():
            break
        await asyncio.sleep(0.05)
    assert not await km.is_alive()
    await km.shutdown_kernel(now=True)
    await km.cleanup_resources()
    assert not os.path.exists(km.connection_file)


@pytest.mark.parametrize(
    "cls",
    [
        pytest.param(StockAsyncIOLoopKM, id="stock"),
        pytest.param(orchestrator.AsyncIOLoopKernelManager, id="ours"),
    ],
)
async def test_restart_callbacks_fire_on_kernel_death(cls: type) -> None:
    km = cls(kernel_name="python3")
    events: list[str] = []
    await km.start_kernel()
    try:
        km.add_restart_callback(lambda: events.append("restart"), "restart")
        first_pid = km.provisioner.pid
        os.kill(first_pid, signal.SIGKILL)
        for _ in range(300):
            if events and km.provisioner.pid != first_pid:
                break
            await asyncio.sleep(0.05)
        assert events == ["restart"]
        km.stop_restarter()
        # The restarter's restart runs on its own: let it finish before shutting down
        # (jupyter_client's pending-state future is not safe against overlapping calls).
        for _ in range(600):
            if km.ready.done() and await km.is_alive():
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
        assert await km.is_alive()
    finally:
        await km.shutdown_kernel(now=True)


@pytest.mark.parametrize("cls", ASYNC_PAIRS)
async def test_nbclient_runs_a_notebook(cls: type) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("a = 20"), nbformat.v4.new_code_cell("print(a * 2 + 2)")]
    km = cls(kernel_name="python3")
    client = NotebookClient(nb, km=km, timeout=60)
    try:
        await client.async_execute()
        assert nb.cells[1].outputs[0]["text"] == "42\n"
    finally:  # nbclient leaves a kernel it was handed running
        await km.shutdown_kernel(now=True)


async def test_our_manager_persists_and_forgets(store: Any) -> None:
    km = orchestrator.AsyncKernelManager(kernel_name="python3", kernel_store=store)
    await km.start_kernel()
    try:
        record = await store.get(km.kernel_id)
        assert record is not None
        assert record.provisioner_name == "orchestrator-local-provisioner"
        assert record.provisioner_info["pid"] == km.provisioner.pid
        assert record.provisioner_info["connection_info"]["key"] == km.session.key
        assert record.instance == store.instance_id
        await km.restart_kernel(now=True)
        record = await store.get(km.kernel_id)
        assert record is not None and record.restarts == 1
        assert record.provisioner_info["pid"] == km.provisioner.pid
    finally:
        await km.shutdown_kernel(now=True)
    assert await store.get(km.kernel_id) is None


class _FailingAfterLaunch(orchestrator.AsyncKernelManager):
    """Fails after the kernel process exists, like a provisioner that cannot finish."""

    async def _async_post_start_kernel(self, **kw: Any) -> None:
        raise RuntimeError("post-launch step failed")


async def test_failed_start_leaves_nothing(store: Any) -> None:
    km = _FailingAfterLaunch(kernel_name="python3", kernel_store=store)
    with pytest.raises(RuntimeError, match="post-launch step failed"):
        await km.start_kernel()
    pid = km.provisioner.pid
    assert pid and not orchestrator.procinfo.is_running(pid)
    assert await store.list() == []
    assert not os.path.exists(km.connection_file)
