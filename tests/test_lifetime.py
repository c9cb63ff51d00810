"""A kernel's life when a transition fails or ends it: no zombie, nothing leaked.

A restart that cannot start the new process (its image is gone), a kernel that dies
past the restart limit, a script that only builds a library multi-kernel manager and
exits: each must leave nothing of the kernel behind where it ends, and never touch
what it did not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import orchestrator
from orchestrator import procinfo
from orchestrator.labels import ENV_KERNEL_ID, LABEL_KERNEL_ID

from .conftest import KERNEL_IMAGE, write_kernelspec
from .test_gateway import (
    ADMIN_TOKEN,
    ALICE,
    BOB,
    Gateway,
    KernelSocket,
    call,
    status_of,
)

pytestmark = [pytest.mark.usefixtures("jupyter_env")]
CLI = str(Path(sys.executable).with_name("kernel-orchestrator"))


def ko(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def processes_of(kernel_id: str) -> list[int]:
    return [
        pid
        for pid in procinfo.all_pids()
        if procinfo.environ(pid).get(ENV_KERNEL_ID) == kernel_id and procinfo.is_running(pid)
    ]


@pytest.mark.slow
async def test_a_failed_restart_leaves_no_zombie(
    docker_engine: str, jupyter_env: dict[str, str], tmp_path: Path, store: Any
) -> None:
    """The image went away while the kernel ran: its restart fails. The kernel is dead
    to its clients (the websocket hears "dead"), gone from the gateway's list, DELETE
    answers 404, and no container, record or lease is left."""
    import docker

    client = docker.from_env()
    doomed = "kernel-orchestrator/doomed:1"
    client.images.get(KERNEL_IMAGE).tag(doomed)
    write_kernelspec(
        jupyter_env["JUPYTER_DATA_DIR"],
        "py-doomed",
        "docker-provisioner",
        {"image": doomed, "pull_policy": "never"},
    )
    gw = Gateway(tmp_path).start()
    try:
        base = gw.url
        kernel = await call(base, ADMIN_TOKEN, "POST", "/api/kernels", {"name": "py-doomed"})
        kernel_id = kernel["id"]
        ws = await KernelSocket.open(base, ADMIN_TOKEN, kernel_id)
        try:
            assert (await ws.execute("print('up')"))["out"] == "up\n"
            client.images.remove(doomed)  # untagged: the running container keeps it
            code, _ = await status_of(
                base, ADMIN_TOKEN, "POST", f"/api/kernels/{kernel_id}/restart"
            )
            assert code >= 500
            states = []
            deadline = time.monotonic() + 30
            while "dead" not in states and time.monotonic() < deadline:
                raw = await asyncio.wait_for(ws.conn.read_message(), 30)
                if raw is None:
                    break
                msg = json.loads(raw)
                if msg["msg_type"] == "status":
                    states.append(msg["content"]["execution_state"])
            assert "dead" in states, states
        finally:
            ws.close()
        listed = await call(base, ADMIN_TOKEN, "GET", "/api/kernels")
        assert kernel_id not in {k["id"] for k in listed}
        code, _ = await status_of(base, ADMIN_TOKEN, "GET", f"/api/kernels/{kernel_id}")
        assert code == 404
        code, _ = await status_of(base, ADMIN_TOKEN, "DELETE", f"/api/kernels/{kernel_id}")
        assert code in (204, 404)
        assert await store.get(kernel_id) is None
        left = client.containers.list(all=True, filters={"label": f"{LABEL_KERNEL_ID}={kernel_id}"})
        assert left == []
    finally:
        gw.kill(signal.SIGTERM)
        if any(doomed in (i.tags or []) for i in client.images.list()):
            client.images.remove(doomed)
        client.close()


async def test_the_restart_limit_gives_the_kernel_up_cleanly(
    jupyter_env: dict[str, str], store: Any
) -> None:
    """A kernel that keeps dying right after each restart: past the restart limit it is
    given up, not left in the manager with its record and lease (jupyter_client only
    stops watching it)."""
    write_kernelspec(
        jupyter_env["JUPYTER_DATA_DIR"],
        "short-lived",
        "orchestrator-local-provisioner",
        {},
        argv=[sys.executable, "-c", "import time; time.sleep(1.5)", "{connection_file}"],
    )
    mkm = orchestrator.AsyncMultiKernelManager(kernel_store=store)
    mkm.kernel_manager_class = "orchestrator.manager.AsyncIOLoopKernelManager"
    from traitlets.config import Config

    config = Config()
    config.KernelRestarter.restart_limit = 1
    config.KernelRestarter.time_to_dead = 0.5
    config.KernelRestarter.stable_start_time = 60.0
    mkm.update_config(config)
    kernel_id = await mkm.start_kernel(kernel_name="short-lived")
    deadline = time.monotonic() + 60
    while kernel_id in mkm.list_kernel_ids() and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert kernel_id not in mkm.list_kernel_ids()
    assert await store.get(kernel_id) is None
    assert processes_of(kernel_id) == []
    await mkm.shutdown_all()  # nothing to trip over


def test_a_script_that_builds_the_library_manager_leaves_cli_kernels_running(
    jupyter_env: dict[str, str],
) -> None:
    """A script that only builds ``AsyncMultiKernelManager()`` (which restores the
    store's kernels) and exits normally does not shut down a kernel the CLI started."""
    started = ko("start", "python3")
    assert started.returncode == 0, started.stderr
    kernel_id = started.stdout.strip()
    try:
        script = (
            "import asyncio, orchestrator\n"
            "async def main():\n"
            "    mkm = orchestrator.AsyncMultiKernelManager()\n"
            "    report = await mkm.restored()\n"
            "    print(len(report.reattached))\n"
            "asyncio.run(main())\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "1"  # it did attach to the kernel...
        assert (
            ko("exec", kernel_id, "print('still here')").stdout == "still here\n"
        )  # ...and left it
    finally:
        ko("shutdown", kernel_id)


async def test_two_clients_of_one_manager_both_get_their_answers(store: Any) -> None:
    """A kept client and a new one from the same manager: jupyter_client gives both the
    manager's session, whose id is the shell socket's zmq identity, and the kernel's
    ROUTER drops one of two connections with one identity. Ours each get a session."""
    km = orchestrator.AsyncKernelManager(kernel_name="python3", kernel_store=store)
    await km.start_kernel()
    first = km.client()
    first.start_channels()
    try:
        await first.wait_for_ready(timeout=60)
        for _ in range(3):
            second = km.client()
            second.start_channels()
            try:
                await second.wait_for_ready(timeout=60)
                for kc in (second, first):
                    reply = await kc.execute_interactive("pass", timeout=30)
                    assert reply["content"]["status"] == "ok"
            finally:
                second.stop_channels()
    finally:
        first.stop_channels()
        await km.shutdown_kernel()


async def test_the_lease_state_follows_each_transition(store: Any) -> None:
    """One explicit state per kernel and process: the starter owns it; a second manager
    attached as a client; released by detach; the starter fenced once another process
    forces a take-over. (Wanting is the take-over tests' in test_ownership.)"""
    from orchestrator.tenure import LeaseState

    km = orchestrator.AsyncKernelManager(kernel_name="python3", kernel_store=store)
    assert km.lease_state is LeaseState.UNRECORDED
    await km.start_kernel()
    try:
        assert km.lease_state is LeaseState.OWNER and km.is_recorded
        client = await orchestrator.attach(km.kernel_id, store=store, own=False)
        assert client.lease_state is LeaseState.CLIENT
        client.detach()
        assert client.lease_state is LeaseState.RELEASED
        forced = ko("interrupt", "--force", km.kernel_id)
        assert forced.returncode == 0, forced.stderr
        deadline = time.monotonic() + 30  # the keeper's next renewal shows the fence
        while km.lease_state is not LeaseState.FENCED and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert km.lease_state is LeaseState.FENCED, km.lease_state
    finally:
        assert ko("shutdown", "--force", km.kernel_id).returncode == 0


async def test_a_reader_waiting_on_a_kept_client_carries_on_across_a_restart(
    store: Any,
) -> None:
    """A task waiting on one of a kept client's channels while the kernel restarts (the
    client rejoins with new sockets) keeps waiting on the new socket: pyzmq cancels what
    waited on the old one, which must not reach the reader as its own cancellation."""
    km = orchestrator.AsyncKernelManager(kernel_name="python3", kernel_store=store)
    await km.start_kernel()
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        waiting = asyncio.ensure_future(kc.get_stdin_msg(timeout=120))
        await asyncio.sleep(0.2)
        await km.restart_kernel()
        await asyncio.sleep(0.5)
        assert not waiting.done(), waiting  # still waiting, now on the new socket
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        reply = await kc.execute_interactive("pass", timeout=30)
        assert reply["content"]["status"] == "ok"
    finally:
        kc.stop_channels()
        await km.shutdown_kernel()


@pytest.mark.slow
async def test_deleting_kernels_that_exit_on_sigint_never_blocks_the_gateway(
    jupyter_env: dict[str, str], kernel_accounts: object, tmp_path: Path
) -> None:
    """Kernels that exit on SIGINT (xeus kernels do; jupyter_client interrupts a kernel
    before its shutdown request), a dozen of two users' at once: a send on the control
    socket of one that had just gone blocked the gateway's event loop for good (every
    later request hung, and SIGTERM with it). Every DELETE now answers, at once."""
    minimal = Path(__file__).resolve().parents[1] / "bench" / "minimal_kernel.py"
    write_kernelspec(
        jupyter_env["JUPYTER_DATA_DIR"],
        "exits-on-sigint",
        "orchestrator-local-provisioner",
        {"transport_encryption": "disabled"},  # (the stand-in kernel has no CurveZMQ)
        argv=[sys.executable, str(minimal), "-f", "{connection_file}"],
    )
    gw = Gateway(tmp_path, "--host-kernels", "exits-on-sigint=ko-{username}").start()
    try:
        body = {"name": "exits-on-sigint"}
        started = await asyncio.gather(
            *(call(gw.url, token, "POST", "/api/kernels", body) for token in [ALICE, BOB] * 6)
        )
        await asyncio.sleep(2)
        paths = [f"/api/kernels/{k['id']}" for k in started]
        deleted = await asyncio.wait_for(
            asyncio.gather(*(status_of(gw.url, ADMIN_TOKEN, "DELETE", p) for p in paths)), 60
        )
        assert [code for code, _ in deleted] == [200] * len(started)
        assert await call(gw.url, ADMIN_TOKEN, "GET", "/api/kernels") == []
    finally:
        for kernel in await call(gw.url, ADMIN_TOKEN, "GET", "/api/kernels"):
            await status_of(gw.url, ADMIN_TOKEN, "DELETE", f"/api/kernels/{kernel['id']}")
        gw.kill(signal.SIGTERM)


async def test_a_start_cancelled_while_its_record_is_written_leaves_no_record(
    store: Any, tmp_path: Path
) -> None:
    """The first record's insert runs on in the store's thread when the start is
    cancelled (as a Slurm start cancelled in the queue is): the cleanup must know that
    the record was written, and remove it with the kernel."""
    from .conftest import kernel_pids_under

    blocker = sqlite3.connect(str(store.path), timeout=30, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another writer: the insert waits for it
    km = orchestrator.AsyncKernelManager(kernel_name="python3", kernel_store=store)
    start = asyncio.ensure_future(km.start_kernel())
    try:
        deadline = time.monotonic() + 60
        # The kernel runs, and the store's one connection is busy with the insert.
        while not (km.provisioner and km.provisioner.has_process and store._lock.locked()):
            assert time.monotonic() < deadline and not start.done()
            await asyncio.sleep(0.02)
        start.cancel()
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    with pytest.raises(asyncio.CancelledError):
        await start
    assert await store.list() == []
    assert kernel_pids_under(tmp_path) == []
