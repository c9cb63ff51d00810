"""The lifecycle every provisioner must get right, run over each of them.

Start, execute and interrupt in both modes; restart (same id, fresh state); shutdown
leaving nothing; re-attach from another process; gc of orphans; the failure paths (a
bad image or host, a crash during start-up, a start-up time-out); hostile kernel ids
and values. Real kernels on real back-ends: local processes, Docker containers, sshd
hosts in network namespaces, pods (the Kubernetes API stand-in, pods run on Docker),
batch jobs on a Slurm cluster in network namespaces.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from traitlets.config import Config

import orchestrator
from orchestrator.errors import OrchestratorError

from ..conftest import write_kernelspec
from ..test_docker import run
from . import backends
from .backends import Backend

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("jupyter_env")]
CLI = str(Path(sys.executable).with_name("kernel-orchestrator"))


def ko(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


@pytest.fixture(params=backends.BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Each provisioner, its infrastructure brought up only when it is asked for."""
    yield from backends.open_backend(request, tmp_path, request.param)


def kernelspec(
    backend: Backend,
    jupyter_env: dict[str, str],
    name: str = "conform",
    *,
    config: dict[str, Any] | None = None,
    argv: list[str] | None = None,
    **extra: Any,
) -> str:
    write_kernelspec(
        jupyter_env["JUPYTER_DATA_DIR"],
        name,
        backend.provisioner,
        {**backend.config, **(config or {})},
        argv=argv or [backend.python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        **extra,
    )
    return name


async def nothing_left(backend: Backend, store: Any, timeout: float = 20) -> None:
    """No record, and nothing of this deployment's kernels exists any more."""
    deadline = time.monotonic() + timeout
    while (left := backend.running(store.instance_id)) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert left == set(), f"{backend.name}: left behind: {left}"
    assert await store.list() == []


# ---------------------------------------------------------------- lifecycle
@pytest.mark.parametrize("mode", ["signal", "message"])
async def test_start_execute_interrupt(
    backend: Backend, jupyter_env: dict[str, str], store: Any, mode: str
) -> None:
    name = kernelspec(backend, jupyter_env, interrupt_mode=mode)
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await km.start_kernel()
    try:
        assert backend.running(store.instance_id)
        assert (await run(km, "x = 20"))["status"] == "ok"
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=30)
            msg_id = kc.execute("import time; time.sleep(60)")
            await asyncio.sleep(1.5)
            await km.interrupt_kernel()
            reply = await kc.get_shell_msg(timeout=30)
            assert reply["parent_header"]["msg_id"] == msg_id
            assert reply["content"]["ename"] == "KeyboardInterrupt"
        finally:
            kc.stop_channels()
        assert (await run(km, "print(x + 22)"))["out"] == "42\n"  # interrupted, not killed
    finally:
        await km.shutdown_kernel()
    await nothing_left(backend, store)


async def test_restart_keeps_the_id_and_clears_the_state(
    backend: Backend, jupyter_env: dict[str, str], store: Any
) -> None:
    km = orchestrator.AsyncKernelManager(
        kernel_name=kernelspec(backend, jupyter_env), kernel_store=store
    )
    await km.start_kernel()
    try:
        kernel_id = km.kernel_id
        assert (await run(km, "state = 5"))["status"] == "ok"
        await km.restart_kernel()
        assert km.kernel_id == kernel_id
        assert (await run(km, "state"))["ename"] == "NameError"
        record = await store.get(kernel_id)
        assert record is not None and record.restarts == 1
        assert len(backend.running(store.instance_id)) >= 1
    finally:
        await km.shutdown_kernel()
    await nothing_left(backend, store)


async def test_an_idle_kernel_costs_no_timer_and_its_death_still_restarts_it(
    backend: Backend, jupyter_env: dict[str, str], store: Any
) -> None:
    """The auto-restarter polls on its timer only through a start's stable-start time,
    then (where the back-end pushes news of its processes) waits to be told. A kernel
    that dies is restarted all the same, and the restarter goes quiet again."""
    config = Config({"KernelRestarter": {"time_to_dead": 0.5, "stable_start_time": 2.0}})
    km = orchestrator.AsyncIOLoopKernelManager(
        kernel_name=kernelspec(backend, jupyter_env), kernel_store=store, config=config
    )
    restarts: list[str] = []
    await km.start_kernel()
    try:
        km.add_restart_callback(lambda: restarts.append("restart"), "restart")

        async def quiet() -> bool:
            # (past the stable-start time: where nothing is pushed, the timer goes on)
            deadline = time.monotonic() + (30 if backend.pushes_liveness else 4)
            while km._restarter.timer_running and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            return not km._restarter.timer_running

        assert await quiet() == backend.pushes_liveness
        assert (await run(km, "x = 1"))["status"] == "ok"
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=60)
            kc.execute("import os; os._exit(3)")  # the kernel ends (no reply)
        finally:
            kc.stop_channels()
        deadline = time.monotonic() + 120
        while not restarts and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert restarts == ["restart"], f"{backend.name}: the death was not noticed"
        while not (km.ready.done() and await km.is_alive()) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert (await run(km, "print('x' in dir())"))["out"] == "False\n"
        assert await quiet() == backend.pushes_liveness
    finally:
        await km.shutdown_kernel()
    await nothing_left(backend, store)


async def test_reattach_from_another_process(
    backend: Backend, jupyter_env: dict[str, str], store: Any
) -> None:
    name = kernelspec(backend, jupyter_env)
    started = ko("start", name)
    assert started.returncode == 0, started.stderr
    kernel_id = started.stdout.strip()
    assert ko("exec", kernel_id, "y = 6").returncode == 0
    km = await orchestrator.attach(kernel_id, store=store)
    try:
        assert (await run(km, "print(y * 7)"))["out"] == "42\n"
    finally:
        await km.shutdown_kernel()
    await nothing_left(backend, store)


async def kept_output(kc: Any, code: str, timeout: float = 90) -> str:
    """What ``code`` prints, run once on a client kept across restarts (no retry)."""
    out: list[str] = []

    def hook(msg: dict[str, Any]) -> None:
        if msg["msg_type"] == "stream":
            out.append(msg["content"]["text"])

    reply = await kc.execute_interactive(code, timeout=timeout, output_hook=hook)
    assert reply["content"]["status"] == "ok", reply["content"]
    return "".join(out)


async def test_a_kept_client_survives_restarts_here_and_elsewhere(
    backend: Backend, jupyter_env: dict[str, str], store: Any
) -> None:
    """One KernelClient, kept from start to end, across a restart another process does
    (the CLI; this process serves the kernel as a client and follows it) and a restart
    this process does: each time the next cell, sent once, gets its output. A restart
    may move the kernel (a new pod address, new remote ports behind the tunnel)."""
    name = kernelspec(backend, jupyter_env)
    started = ko("start", name)
    assert started.returncode == 0, started.stderr
    kernel_id = started.stdout.strip()
    km = await orchestrator.attach(kernel_id, store=store, own=False, lease_seconds=3)
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        assert await kept_output(kc, "x = 1; print('before')") == "before\n"

        restarted = ko("restart", kernel_id)  # another process; this one is a client
        assert restarted.returncode == 0, restarted.stderr
        deadline = time.monotonic() + 30  # the lease keeper's look at the store
        while km._restart_count != 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert km._restart_count == 1, "this process did not follow the restart"
        assert await kept_output(kc, "print('x' in dir()); x = 2") == "False\n"

        await km.restart_kernel()  # this process (it claims the kernel first)
        assert await kept_output(kc, "print('x' in dir())") == "False\n"
        record = await store.get(kernel_id)
        assert record is not None and record.restarts == 2
    finally:
        kc.stop_channels()
        await km.shutdown_kernel()
    await nothing_left(backend, store)


async def test_a_kept_gateway_websocket_survives_restarts_here_and_elsewhere(
    backend: Backend, jupyter_env: dict[str, str], store: Any, tmp_path: Path
) -> None:
    """JupyterLab keeps its kernel websocket across a restart it did not ask for. Through
    the gateway: a restart by the gateway itself, then one by another process (the CLI
    takes the kernel over; the gateway carries on serving it as a client, and moves to
    the new process as soon as its websocket loses the old one): each time the next
    cell, sent once, gets its output."""
    from ..test_gateway import ADMIN_TOKEN, Gateway, KernelSocket, call

    name = kernelspec(backend, jupyter_env)
    gw = Gateway(tmp_path, users=False).start()
    try:
        kernel_id = (await call(gw.url, ADMIN_TOKEN, "POST", "/api/kernels", {"name": name}))["id"]
        ws = await KernelSocket.open(gw.url, ADMIN_TOKEN, kernel_id)
        try:
            assert (await ws.execute("x = 1; print('up')", timeout=120))["out"] == "up\n"
            await call(gw.url, ADMIN_TOKEN, "POST", f"/api/kernels/{kernel_id}/restart")
            reply = await ws.execute("print('x' in dir()); x = 2", timeout=120)
            assert reply["out"] == "False\n"
            restarted = ko("restart", "--force", kernel_id)
            assert restarted.returncode == 0, restarted.stderr
            assert (await ws.execute("print('x' in dir())", timeout=120))["out"] == "False\n"
        finally:
            ws.close()
        await call(gw.url, ADMIN_TOKEN, "DELETE", f"/api/kernels/{kernel_id}")
    finally:
        gw.kill(signal.SIGTERM)
    await nothing_left(backend, store)


def _in_a_forked_child(kernel_name: str, store_url: str) -> str:
    """Start, use and shut down a kernel (in a forked child of a process that used a
    manager: it inherits that process's orchestrator state without its threads)."""

    async def main() -> str:
        from orchestrator.manager import shared_store

        km = orchestrator.AsyncKernelManager(
            kernel_name=kernel_name, kernel_store=shared_store(store_url)
        )
        await km.start_kernel()
        try:
            kc = km.client()
            kc.start_channels()
            try:
                await kc.wait_for_ready(timeout=60)
                return await kept_output(kc, "print(6 * 7)")
            finally:
                kc.stop_channels()
        finally:
            await km.shutdown_kernel()

    return asyncio.run(asyncio.wait_for(main(), 150))


async def test_a_forked_child_runs_kernels_after_its_parent_did(
    backend: Backend, jupyter_env: dict[str, str], store: Any
) -> None:
    """A process that used a manager, then forks (a ProcessPoolExecutor with the fork
    start method, as notebook runners use): the child's kernel starts, answers and is
    shut down, as with stock jupyter_client."""
    import concurrent.futures
    import multiprocessing

    name = kernelspec(backend, jupyter_env)
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await km.start_kernel()  # the parent's store, keeper, pools and connections in use
    try:
        assert (await run(km, "print('parent')"))["out"] == "parent\n"
        with concurrent.futures.ProcessPoolExecutor(
            1, mp_context=multiprocessing.get_context("fork")
        ) as pool:
            child = pool.submit(_in_a_forked_child, name, store.url)
            assert await asyncio.wrap_future(child) == "42\n"
        assert (await run(km, "print('parent again')"))["out"] == "parent again\n"
    finally:
        await km.shutdown_kernel()
    await nothing_left(backend, store)


async def test_gc_removes_orphans(
    backend: Backend, jupyter_env: dict[str, str], store: Any
) -> None:
    name = kernelspec(backend, jupyter_env)
    kept = ko("start", name).stdout.strip()
    orphan = ko("start", name).stdout.strip()
    assert kept and orphan
    await store.delete(orphan)  # a kernel whose record was lost
    out = ko("gc", "--grace", "0")
    assert out.returncode == 0 and orphan in out.stdout, out
    deadline = time.monotonic() + 20
    while orphan in backend.running(store.instance_id) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert orphan not in backend.running(store.instance_id)
    assert ko("exec", kept, "print('kept')").stdout == "kept\n"  # owned: untouched
    assert ko("shutdown", kept).returncode == 0
    await nothing_left(backend, store)


# ------------------------------------------------------------ failure paths
async def test_a_bad_image_or_host_fails_clearly(
    backend: Backend, jupyter_env: dict[str, str], store: Any
) -> None:
    if not backend.broken:
        pytest.skip(f"{backend.name}: no image or host to get wrong")
    name = kernelspec(backend, jupyter_env, config=backend.broken)
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    with pytest.raises(OrchestratorError, match=backend.broken_message):
        await km.start_kernel()
    await nothing_left(backend, store)


async def test_a_crash_during_start_up_shows_its_output(
    backend: Backend, jupyter_env: dict[str, str], store: Any
) -> None:
    crash = [backend.python, "-c", "import sys; print('no licence server'); sys.exit(4)"]
    name = kernelspec(backend, jupyter_env, argv=crash)
    result = ko("start", name, "--timeout", "60")
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("error: ") and "exited during start-up" in result.stderr
    assert "no licence server" in result.stderr  # the kernel's own last words
    await nothing_left(backend, store)


async def test_a_start_up_time_out_is_bounded_and_clean(
    backend: Backend, jupyter_env: dict[str, str], store: Any
) -> None:
    hang = [backend.python, "-c", "import time; time.sleep(600)"]
    config = {"startup_timeout": 4} if backend.startup_timeout else {}
    name = kernelspec(backend, jupyter_env, argv=hang, config=config)
    started = time.monotonic()
    result = ko("start", name, "--timeout", "4")
    assert result.returncode == 1 and result.stderr.startswith("error: "), result.stderr
    assert any(
        phrase in result.stderr
        for phrase in ("not ready within 4s", "did not answer", "did not bind its ports in time")
    ), result.stderr
    assert time.monotonic() - started < 60  # the bound, not the kernel's sleep
    await nothing_left(backend, store)


# ---------------------------------------------------------- hostile inputs
@pytest.mark.parametrize("kernel_id", ["../../etc", "a b", "-rf", "x" * 200, "é"])
async def test_hostile_kernel_ids_are_refused(
    backend: Backend, jupyter_env: dict[str, str], store: Any, kernel_id: str
) -> None:
    km = orchestrator.AsyncKernelManager(
        kernel_name=kernelspec(backend, jupyter_env), kernel_store=store
    )
    with pytest.raises(OrchestratorError, match="invalid kernel id"):
        await km.start_kernel(kernel_id=kernel_id)
    await nothing_left(backend, store)


@pytest.mark.parametrize(
    "env, message",
    [
        ({"KERNEL_NOTE": "a\0b"}, "contains a NUL byte"),
        ({"KERNEL_NOTE": "x" * 40000}, "longer than 32768 bytes"),
        ({"KERNEL_$(id)": "1"}, "is not valid"),
    ],
)
async def test_hostile_client_values_are_refused(
    backend: Backend, jupyter_env: dict[str, str], store: Any, env: dict[str, str], message: str
) -> None:
    if not backend.filters_client_env:
        pytest.skip(f"{backend.name}: the kernel inherits its environment, as jupyter_client's")
    km = orchestrator.AsyncKernelManager(
        kernel_name=kernelspec(backend, jupyter_env), kernel_store=store
    )
    with pytest.raises(OrchestratorError, match=message):
        await km.start_kernel(env={**os.environ, **env})
    await nothing_left(backend, store)
