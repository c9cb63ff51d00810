"""The Slurm provisioner against a real Slurm cluster (slurmctld, two slurmds, munge)
that the tests build in network namespaces (:mod:`tests.slurmnet`)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import orchestrator
from orchestrator import procinfo

from .conftest import write_kernelspec
from .test_docker import run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("jupyter_env")]


def kernel_processes(kernel_id: str) -> list[int]:
    """Processes of a kernel in a job (the nodes share this machine's pid space)."""
    return [
        pid
        for pid in procinfo.all_pids()
        if procinfo.environ(pid).get("KERNEL_ORCHESTRATOR_KERNEL_ID") == kernel_id
        and procinfo.is_running(pid)
    ]


def slurm_config(slurmnet: Any, remote_dir: Path, **config: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "hosts": [f"root@{slurmnet.login_ip}"],
        "identity_file": str(slurmnet.user_key),
        "known_hosts": str(slurmnet.known_hosts),
        "python": sys.executable,
        "remote_dir": str(remote_dir),
        "connect_timeout": 5,
        "resources": {"partition": "batch", "time": "00:30:00", "cpus": "1", "mem": "200M"},
        "queue_interval": 0.5,
    }
    base.update(config)
    return base


@pytest.fixture
def remote_dir(tmp_path: Path) -> Path:
    return tmp_path / "slurm-kernels"


@pytest.fixture
def slurmspec(slurmnet: Any, jupyter_env: dict[str, str], remote_dir: Path):  # type: ignore[no-untyped-def]
    """Write a slurm kernelspec named ``name`` with extra config."""

    def make(name: str, **config: Any) -> str:
        write_kernelspec(
            jupyter_env["JUPYTER_DATA_DIR"],
            name,
            "slurm-provisioner",
            slurm_config(slurmnet, remote_dir, **config),
        )
        return name

    return make


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


async def test_lifecycle_in_a_batch_job(slurmspec: Any, store: Any, slurmnet: Any) -> None:
    """Start, execute, interrupt (the kernel gets SIGINT), restart inside the same job,
    shut down: the job ends and nothing is left on the cluster."""
    km = orchestrator.AsyncKernelManager(kernel_name=slurmspec("batch"), kernel_store=store)
    await km.start_kernel()
    prov = km.provisioner
    try:
        (job,) = [j for j in slurmnet.live_jobs() if j["id"] == prov.job_id]
        assert job["state"] == "RUNNING" and job["name"] == f"kernel-{km.kernel_id}"
        assert job["comment"] == (
            f"kernel-orchestrator instance={store.instance_id} kernel={km.kernel_id}"
        )
        assert prov.node in slurmnet.node_ips.values()
        result = await run(km, "import os; x = 41; print(os.environ['SLURM_JOB_ID'])")
        assert result["out"].strip() == prov.job_id
        # The key is in no job description, argv or environment.
        key = km.session.key.decode()
        shown = slurmnet.scontrol("show", "job", prov.job_id)
        assert key not in shown
        for pid in kernel_processes(km.kernel_id):
            assert key.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
            assert key not in str(procinfo.environ(pid))

        # Interrupt: a running cell gets KeyboardInterrupt, the kernel survives.
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=30)
            msg_id = kc.execute("import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
                                "    print('interrupted')")  # fmt: skip
            await asyncio.sleep(1.5)
            await km.interrupt_kernel()
            reply = await kc._async_get_shell_msg(timeout=20)  # type: ignore[attr-defined]
            while reply["parent_header"].get("msg_id") != msg_id:
                reply = await kc._async_get_shell_msg(timeout=20)  # type: ignore[attr-defined]
            assert reply["content"]["status"] == "ok"
        finally:
            kc.stop_channels()
        assert (await run(km, "print(x + 1)"))["out"] == "42\n"

        # Restart: a new kernel process, in the same job.
        before = kernel_processes(km.kernel_id)
        await km.restart_kernel()
        assert prov.job_id == job["id"] and prov.generation == 1
        assert (await run(km, "print('x' in dir())"))["out"] == "False\n"
        assert set(kernel_processes(km.kernel_id)).isdisjoint(before)
    finally:
        await km.shutdown_kernel()
    wait_until(lambda: not [j for j in slurmnet.live_jobs() if j["id"] == job["id"]], 30, "job end")
    assert kernel_processes(km.kernel_id) == []
    assert await store.list() == []
    assert not (Path(prov.remote_dir) / km.kernel_id).exists()


async def test_sanity_of_the_cluster(slurmnet: Any) -> None:
    assert {n: ip for n, ip in slurmnet.node_ips.items()}
    assert os.geteuid() == 0 and signal.SIGINT
