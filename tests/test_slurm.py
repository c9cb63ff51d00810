"""The Slurm provisioner against a real Slurm cluster (slurmctld, two slurmds, munge)
that the tests build in network namespaces (:mod:`tests.slurmnet`)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import orchestrator
from orchestrator import procinfo
from orchestrator.errors import KernelStartError, OrchestratorError

from .conftest import write_kernelspec
from .helpers import start_is_refused_for_plain_text
from .test_docker import run
from .test_ssh import CROSS_USER_SPY, PEEK

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("jupyter_env")]
CLI = str(Path(sys.executable).with_name("kernel-orchestrator"))


def ko(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


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

    def make(name: str, home_dir: bool = False, **config: Any) -> str:
        """``home_dir``: the kernels' files in each account's home, the default."""
        config = slurm_config(slurmnet, remote_dir, **config)
        if home_dir:
            del config["remote_dir"]
        write_kernelspec(jupyter_env["JUPYTER_DATA_DIR"], name, "slurm-provisioner", config)
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
            msg_id = kc.execute(
                "import time\ntry:\n    time.sleep(60)\nexcept KeyboardInterrupt:\n"
                "    print('interrupted')"
            )
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


def jobs_of(slurmnet: Any, kernel_id: str) -> list[dict[str, str]]:
    return [j for j in slurmnet.live_jobs() if j["comment"].endswith(f"kernel={kernel_id}")]


@pytest.fixture
def held_partition(slurmnet: Any) -> Iterator[str]:
    """A partition that is down: its jobs pend (reason PartitionDown) until it is up."""
    yield "held"
    slurmnet.scontrol("update", "PartitionName=held", "State=DOWN")


async def test_queue_wait_shows_progress_then_starts(
    slurmspec: Any, store: Any, slurmnet: Any, held_partition: str
) -> None:
    name = slurmspec("queued", resources={"partition": held_partition, "time": "00:10:00"})
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    start = asyncio.ensure_future(km.start_kernel())
    try:
        deadline = time.monotonic() + 30
        while "pending (PartitionDown)" not in getattr(km.provisioner, "start_phase", ""):
            assert time.monotonic() < deadline and not start.done()
            await asyncio.sleep(0.2)
        job_id = km.provisioner.job_id
        assert km.provisioner.status_fields()["phase"] == f"job {job_id} pending (PartitionDown)"
        slurmnet.scontrol("update", f"PartitionName={held_partition}", "State=UP")
        await asyncio.wait_for(start, 60)
        assert km.provisioner.job_id == job_id
        assert (await run(km, "print(6 * 7)"))["out"] == "42\n"
    finally:
        if not start.done():
            start.cancel()
        await km.shutdown_kernel(now=True)
    wait_until(lambda: jobs_of(slurmnet, km.kernel_id) == [], 30, "the job's end")


async def test_cancel_while_pending_leaves_nothing(
    slurmspec: Any, store: Any, slurmnet: Any, remote_dir: Path, held_partition: str
) -> None:
    name = slurmspec("cancelled", resources={"partition": held_partition, "time": "00:10:00"})
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    start = asyncio.ensure_future(km.start_kernel())
    deadline = time.monotonic() + 30
    while not (km.provisioner and km.provisioner.job_id):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert len(jobs_of(slurmnet, km.kernel_id)) == 1
    start.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start
    wait_until(lambda: jobs_of(slurmnet, km.kernel_id) == [], 30, "the job's end")
    assert await store.list() == []
    assert not (remote_dir / km.kernel_id).exists()


async def test_the_queue_time_out_cancels_the_job(
    slurmspec: Any, store: Any, slurmnet: Any, remote_dir: Path, held_partition: str
) -> None:
    name = slurmspec(
        "queue-timeout",
        resources={"partition": held_partition, "time": "00:10:00"},
        queue_timeout=3,
    )
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    with pytest.raises(
        KernelStartError,
        match=r"was still pending after 3s \(reason: "
        r"PartitionDown\); it has been cancelled",
    ):
        await km.start_kernel()
    wait_until(lambda: jobs_of(slurmnet, km.kernel_id) == [], 30, "the job's end")
    assert await store.list() == [] and list(remote_dir.iterdir()) == []


def test_cli_start_timeout_names_the_pending_job(
    slurmnet: Any, jupyter_env: dict[str, str], remote_dir: Path, held_partition: str
) -> None:
    installed = ko(
        "kernelspec",
        "install",
        "slurm-provisioner",
        "--name",
        "hpc",
        "--host",
        f"root@{slurmnet.login_ip}",
        "--identity-file",
        str(slurmnet.user_key),
        "--known-hosts",
        str(slurmnet.known_hosts),
        "--partition",
        held_partition,
        "--time",
        "00:10:00",
        "--python",
        sys.executable,
        "--remote-dir",
        str(remote_dir),
        "--sbatch-arg=--mail-type=NONE",
    )
    assert installed.returncode == 0, installed.stderr
    result = ko("start", "hpc", "--timeout", "6")
    assert result.returncode == 1, result
    assert re.fullmatch(
        r"error: kernel 'hpc' was not ready within 6s: job \d+ pending \(PartitionDown\);"
        r" it has been cleaned up\n",
        result.stderr,
    ), result.stderr
    assert [j for j in slurmnet.live_jobs() if j["name"].startswith("kernel-")] == []
    # Refused at install: no job could ever run with these.
    bad = ko(
        "kernelspec",
        "install",
        "slurm-provisioner",
        "--name",
        "bad",
        "--host",
        "login",
        "--partition",
        "batch",
        "--time",
        "0",
    )
    assert bad.returncode != 0 and "time '0' must be more than zero" in bad.stderr, bad.stderr


async def test_a_job_ended_by_its_walltime_makes_the_kernel_dead(
    slurmspec: Any, store: Any, slurmnet: Any, caplog: pytest.LogCaptureFixture
) -> None:
    km = orchestrator.AsyncKernelManager(
        kernel_name=slurmspec("walltime", walltime_warning=3600), kernel_store=store
    )
    await km.start_kernel()
    prov = km.provisioner
    try:
        assert await km.is_alive()
        # Warned on the first queue reading that shows the job's time left: under load
        # that may be a poll or two after the start returned.
        deadline = time.monotonic() + 30
        while not prov.warned and time.monotonic() < deadline:
            assert await km.is_alive()
            await asyncio.sleep(0.5)
        assert prov.warned and "walltime ends in" in prov.status_fields()["warning"]
        assert "reaches its walltime in" in caplog.text
        slurmnet.scontrol("update", f"JobId={prov.job_id}", "TimeLimit=00:00:01")
        deadline = time.monotonic() + 90
        while await km.is_alive():
            assert time.monotonic() < deadline, slurmnet.jobs()
            await asyncio.sleep(0.5)
        assert "reached its time limit (walltime)" in prov.end_reason
        wait_until(lambda: kernel_processes(km.kernel_id) == [], 30, "the kernel's end")
        # A restart cannot bring back the allocation: it fails, saying why, and the
        # kernel is cleaned up.
        with pytest.raises(KernelStartError, match=r"reached its time limit.*start a new kernel"):
            await km.restart_kernel(now=True)
    finally:
        if await store.list():
            await km.shutdown_kernel(now=True)
    assert await store.list() == []


async def test_a_node_failure_makes_the_kernel_dead(
    slurmspec: Any, store: Any, slurmnet: Any
) -> None:
    km = orchestrator.AsyncKernelManager(kernel_name=slurmspec("node-fail"), kernel_store=store)
    await km.start_kernel()
    prov = km.provisioner
    node = next(n for n, ip in slurmnet.node_ips.items() if ip == prov.node)
    try:
        slurmnet.cut(node)
        deadline = time.monotonic() + 90
        while await km.is_alive():
            assert time.monotonic() < deadline, slurmnet.jobs()
            await asyncio.sleep(0.5)
        assert "the job's node failed" in prov.end_reason
    finally:
        slurmnet.restore(node)
        await km.shutdown_kernel(now=True)
    assert await store.list() == []
    # Back on the network, the node's slurmd is told to end the job: nothing lingers.
    wait_until(lambda: kernel_processes(km.kernel_id) == [], 90, "the orphaned kernel's end")
    restarted = [0.0]

    def in_service() -> bool:
        if time.monotonic() - restarted[0] > 10:  # a fresh slurmd registers at once
            slurmnet.kill_slurmd(node)
            slurmnet.start_slurmd(node)
            restarted[0] = time.monotonic()
        slurmnet.resume(node)
        states = slurmnet.run("login", ["sinfo", "-h", "-n", node, "-o", "%T"]).stdout.split()
        return set(states) == {"idle"}  # a line per partition

    info = ["sinfo", "-h", "-N", "-o", "%N %T %E"]
    wait_until(in_service, 60, f"{node} back in service: {slurmnet.run('login', info).stdout}")


async def test_an_unreachable_controller_is_unknown_not_death(
    slurmspec: Any, store: Any, slurmnet: Any
) -> None:
    km = orchestrator.AsyncKernelManager(kernel_name=slurmspec("ctld-down"), kernel_store=store)
    await km.start_kernel()
    prov = km.provisioner
    queue = await prov._queue()
    try:
        assert (await run(km, "x = 1"))["status"] == "ok"
        slurmnet.freeze_controller()
        try:
            until = time.monotonic() + 12
            while time.monotonic() < until:
                assert await prov.poll() is None  # never "dead"
                await asyncio.sleep(0.5)
            assert queue.failures >= 1 and "Socket timed out" in queue.last_error
            # The kernel itself needs no controller: it still answers.
            assert (await run(km, "print(x + 41)"))["out"] == "42\n"
        finally:
            slurmnet.thaw_controller()
        deadline = time.monotonic() + 60
        while queue.failures:
            assert time.monotonic() < deadline
            await prov.poll()
            await asyncio.sleep(0.5)
        assert await prov.poll() is None and jobs_of(slurmnet, km.kernel_id)
    finally:
        await km.shutdown_kernel()
    wait_until(lambda: jobs_of(slurmnet, km.kernel_id) == [], 30, "the job's end")


HOLDER = """
import asyncio, os, sys
import orchestrator
async def main():
    km = orchestrator.AsyncKernelManager(kernel_name=sys.argv[1], outlive_process=True)
    start = asyncio.ensure_future(km.start_kernel())
    # The job id is known a moment before its record is saved: wait for both.
    while not (
        km.provisioner and km.provisioner.job_id and await km.kernel_store.get(km.kernel_id)
    ):
        await asyncio.sleep(0.05)
    print(km.kernel_id, flush=True)
    await start
    if sys.argv[2] == "ready":
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=60)  # IOPub subscribed: no output is missed
        await kc.execute_interactive("kept = 'state'", timeout=60)
        print("ready", flush=True)
    await asyncio.sleep(600)
asyncio.run(main())
"""


def holder(name: str, until: str) -> tuple[subprocess.Popen[str], str]:
    """A process that starts a kernel and prints its id (and 'ready' once it is)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, name, until], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    kernel_id = proc.stdout.readline().strip()
    if until == "ready":
        assert proc.stdout.readline().strip() == "ready"
    return proc, kernel_id


async def test_kill_9_of_the_orchestrator_then_reattach(
    slurmspec: Any, store: Any, slurmnet: Any
) -> None:
    proc, kernel_id = holder(slurmspec("reattach"), "ready")
    proc.kill()
    proc.wait()
    km = await orchestrator.attach(kernel_id, store=store)
    try:
        assert (await run(km, "print(kept)"))["out"] == "state\n"
        await km.restart_kernel()  # still in the same job
        assert len(jobs_of(slurmnet, kernel_id)) == 1
    finally:
        await km.shutdown_kernel()
    wait_until(lambda: jobs_of(slurmnet, kernel_id) == [], 30, "the job's end")


async def test_a_start_killed_in_the_queue_is_cancelled_by_the_next_process(
    slurmspec: Any, store: Any, slurmnet: Any, held_partition: str
) -> None:
    name = slurmspec("killed-pending", resources={"partition": held_partition, "time": "00:10:00"})
    proc, kernel_id = holder(name, "pending")
    proc.kill()
    proc.wait()
    assert len(jobs_of(slurmnet, kernel_id)) == 1 and await store.get(kernel_id)
    mkm = orchestrator.AsyncMultiKernelManager(kernel_store=store)
    await mkm.restore_kernels()
    assert kernel_id not in mkm.list_kernel_ids()
    wait_until(lambda: jobs_of(slurmnet, kernel_id) == [], 30, "the pending job's cancel")
    assert await store.list() == []


async def test_gc_cancels_only_its_own_orphans(slurmspec: Any, store: Any, slurmnet: Any) -> None:
    name = slurmspec("gc")
    proc, orphan = holder(name, "ready")
    proc.kill()
    proc.wait()
    await store.delete(orphan)  # its record is lost
    foreign = slurmnet.run(
        "login",
        [
            "sbatch",
            "--parsable",
            "--time=00:05:00",
            "--job-name=kernel-not-ours",
            "--output=/dev/null",
            "--comment=kernel-orchestrator instance=someone-else kernel=x",
            "--wrap=sleep 300",
        ],
        check=True,
    ).stdout.strip()
    try:
        out = ko("gc", "--grace", "0")
        assert out.returncode == 0 and orphan in out.stdout, out
        wait_until(lambda: jobs_of(slurmnet, orphan) == [], 30, "the orphan's cancel")
        assert foreign in {j["id"] for j in slurmnet.live_jobs()}
    finally:
        slurmnet.run("login", ["scancel", foreign])


@pytest.mark.parametrize(
    "env, message",
    [
        ({"KERNEL_SLURM_TIME": "0"}, "time '0' must be more than zero"),
        ({"KERNEL_SLURM_TIME": "soon"}, "time 'soon' is not a Slurm time limit"),
        ({"KERNEL_SLURM_TIME": "12:00:00"}, "time '12:00:00' is above this kernelspec's maximum"),
        ({"KERNEL_SLURM_MEM": "0"}, "mem '0' must be a positive size"),
        ({"KERNEL_SLURM_MEM": "-1G"}, "mem '-1G' must be a positive size"),
        ({"KERNEL_SLURM_MEM": "1T"}, "mem '1T' is above this kernelspec's maximum 64G"),
        ({"KERNEL_SLURM_CPUS": "0"}, "cpus '0' must be a whole number from 1"),
        ({"KERNEL_SLURM_CPUS": "1e3"}, "cpus '1e3' must be a whole number"),
        ({"KERNEL_SLURM_CPUS": "NaN"}, "cpus 'NaN' must be a whole number"),
        ({"KERNEL_SLURM_PARTITION": "debug"}, "does not let a start set partition"),
        ({"KERNEL_SLURM_GRES": "gpu:1"}, "does not let a start set gres"),
        ({"KERNEL_SLURM_PROFILE": "huge"}, "Slurm profile 'huge' is not defined"),
        ({"KERNEL_SLURM_SBATCH_ARGS": "--wrap=id"}, "--wrap is set by the provisioner"),
        ({"KERNEL_SLURM_SBATCH_ARGS": "--output=/etc/x"}, "--output is set by the provisioner"),
        ({"KERNEL_SLURM_SBATCH_ARGS": "--uid=0"}, "--uid is set by the provisioner"),
        ({"KERNEL_SLURM_SBATCH_ARGS": "--exclusive"}, "--exclusive cannot be given by a start"),
        # read as sbatch reads them: abbreviations, repeats, resources given twice
        ({"KERNEL_SLURM_SBATCH_ARGS": "--arr=0-999"}, "--arr abbreviates --array"),
        ({"KERNEL_SLURM_SBATCH_ARGS": "--mail-t=ALL"}, "--mail-t abbreviates --mail-type"),
        ({"KERNEL_SLURM_SBATCH_ARGS": "--ou=/etc/x"}, "--ou abbreviates --output"),
        (
            {"KERNEL_SLURM_SBATCH_ARGS": "--mail-type=NONE --mail-type=ALL"},
            "--mail-type is given twice",
        ),
        ({"KERNEL_SLURM_SBATCH_ARGS": "--time=48:00:00"}, "use KERNEL_SLURM_TIME, within"),
        ({"KERNEL_SLURM_SBATCH_ARGS": "--mem=1T"}, "--mem cannot be given by a start"),
        ({"KERNEL_SLURM_SBATCH_ARGS": "--gpus=8"}, "--gpus cannot be given by a start"),
        ({"KERNEL_SLURM_SBATCH_ARGS": "--nope=1"}, "--nope is not an sbatch option"),
        ({"KERNEL_SLURM_SBATCH_ARGS": "--mail-type"}, "--mail-type needs a value"),
        ({"KERNEL_SLURM_SBATCH_ARGS": "--mail-user=a;id"}, "no spaces or shell characters"),
        ({"KERNEL_SLURM_SBATCH_ARGS": "-p debug"}, "must look like --flag or --flag=value"),
        ({"KERNEL_SLURM_SBATCH_ARGS": "'unclosed"}, "No closing quotation"),
    ],
)
async def test_hostile_resource_values_are_refused_before_sbatch(
    slurmspec: Any, store: Any, slurmnet: Any, remote_dir: Path, env: dict[str, str], message: str
) -> None:
    name = slurmspec("hostile", sbatch_arg_allowlist=["--mail-type=*", "--mail-user=*"])
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    with pytest.raises(OrchestratorError, match=re.escape(message)):
        await km.start_kernel(env={**os.environ, **env})
    assert jobs_of(slurmnet, km.kernel_id) == [] and await store.list() == []
    assert not remote_dir.exists() or list(remote_dir.iterdir()) == []


async def test_allowed_values_and_profiles_reach_sbatch(
    slurmspec: Any, store: Any, slurmnet: Any
) -> None:
    name = slurmspec(
        "profiles",
        profiles={"small": {"cpus": "2", "mem": "300M", "sbatch_args": ["--nice=10"]}},
        sbatch_arg_allowlist=["--mail-type=*"],
        setup=["export FROM_SETUP=module-loaded"],
    )
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    env = {
        "KERNEL_SLURM_PROFILE": "small",
        "KERNEL_SLURM_TIME": "00:20:00",
        "KERNEL_SLURM_SBATCH_ARGS": "--mail-type=NONE",
    }
    await km.start_kernel(env={**os.environ, **env})
    try:
        shown = slurmnet.scontrol("show", "job", km.provisioner.job_id)
        assert "NumCPUs=2" in shown and "TimeLimit=00:20:00" in shown and "Nice=10" in shown
        assert "mem=300M" in shown
        out = await run(km, "import os; print(os.environ.get('FROM_SETUP'))")
        assert out["out"] == "module-loaded\n"
    finally:
        await km.shutdown_kernel()


async def test_two_users_kernels_on_one_node_cannot_reach_each_other(
    slurmspec: Any, store: Any, slurmnet: Any, kernel_accounts: tuple[str, ...]
) -> None:
    """Alice's and Bob's jobs run as their own accounts on the same node: Alice's kernel
    reads neither Bob's connection file nor his directory, and hears nothing on his
    IOPub port (the node hop is CurveZMQ-encrypted)."""
    keys = {account: slurmnet.authorize_account(account) for account in kernel_accounts}
    name = slurmspec(
        "per-user",
        user="ko-{username}",
        identity_file=str(keys["ko-alice"]).replace("ko-alice", "ko-{username}"),
        home_dir=True,
        sbatch_args=["--nodelist=node1"],
    )

    def manager() -> Any:
        return orchestrator.AsyncKernelManager(
            kernel_name=name, kernel_store=store, multi_tenant=True
        )

    alice, bob = manager(), manager()
    await alice.start_kernel(env={**os.environ, "KERNEL_USERNAME": "alice"})
    await bob.start_kernel(env={**os.environ, "KERNEL_USERNAME": "bob"})
    try:
        theirs = bob.provisioner
        assert alice.provisioner.node == theirs.node == slurmnet.node_ips["node1"]
        assert {j["user"] for j in slurmnet.live_jobs()} >= {"ko-alice", "ko-bob"}
        assert alice.get_connection_info().get("curve_secretkey")
        kdir = f"/home/ko-bob/.kernel-orchestrator/slurm/{bob.kernel_id}"
        code = CROSS_USER_SPY.format(
            conn=f"{kdir}/connection.json",
            kdir=kdir,
            host=theirs.node,
            iopub=theirs.remote_ports["iopub"],
        )
        seen = json.loads((await run(alice, code))["out"])
        assert seen == {"me": "ko-alice", "file": "PermissionError", "dir": "PermissionError"}
        assert (await run(bob, "print('bob-private')"))["out"] == "bob-private\n"
        heard = await run(
            alice, "n = 0\nwhile spy.poll(2000):\n    spy.recv_multipart(); n += 1\nprint(n)"
        )
        assert heard["out"] == "0\n"
    finally:
        await asyncio.gather(alice.shutdown_kernel(now=True), bob.shutdown_kernel(now=True))
    for km in (alice, bob):
        wait_until(lambda km=km: jobs_of(slurmnet, km.kernel_id) == [], 30, "the job's end")


ON_LOGIN_NODE = """
import asyncio, sys
import orchestrator

async def main():
    km = orchestrator.AsyncKernelManager(kernel_name=sys.argv[1])
    await km.start_kernel()
    try:
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=60)
        out = []
        hook = lambda m: out.append(m["content"]["text"]) if m["msg_type"] == "stream" else None
        code = "import os; print(os.environ['SLURM_JOB_ID'])"
        await kc.execute_interactive(code, timeout=60, output_hook=hook)
        kc.stop_channels()
        prov = km.provisioner
        print(prov.job_id, km.get_connection_info()["ip"], "".join(out).strip(),
              prov._tunnel is None, prov._conn.target.describe(), sep="|")
    finally:
        await km.shutdown_kernel()

asyncio.run(main())
"""


async def test_the_orchestrator_on_the_login_node_needs_no_ssh(
    slurmspec: Any, slurmnet: Any
) -> None:
    """Run on the login host itself: sbatch and squeue run there, no SSH, no tunnel."""
    name = slurmspec("on-login", hosts=[], identity_file="", on_login_node=True)
    done = await asyncio.to_thread(
        slurmnet.run, "login", [sys.executable, "-c", ON_LOGIN_NODE, name], timeout=180
    )
    assert done.returncode == 0, done.stderr[-3000:]
    job_id, ip, seen_job, no_tunnel, via = done.stdout.strip().splitlines()[-1].split("|")
    assert seen_job == job_id and ip in slurmnet.node_ips.values()
    assert no_tunnel == "True" and via == "this host (no SSH)"
    wait_until(lambda: job_id not in {j["id"] for j in slurmnet.live_jobs()}, 30, "job end")


def test_kernelspec_install_on_the_login_node(jupyter_env: dict[str, str]) -> None:
    import json as _json

    base = [
        "kernelspec",
        "install",
        "slurm-provisioner",
        "--partition",
        "batch",
        "--time",
        "1:00:00",
    ]
    done = ko(*base, "--name", "local-hpc", "--on-login-node", "--gres", "gpu:1")
    assert done.returncode == 0, done.stderr
    spec = Path(jupyter_env["JUPYTER_DATA_DIR"]) / "kernels" / "local-hpc" / "kernel.json"
    config = _json.loads(spec.read_text())["metadata"]["kernel_provisioner"]["config"]
    assert config["on_login_node"] is True and "hosts" not in config
    assert config["resources"] == {"partition": "batch", "time": "01:00:00", "gres": "gpu:1"}
    for extra in ([], ["--on-login-node", "--host", "login1"]):
        refused = ko(*base, "--name", "x", *extra)
        assert refused.returncode != 0
        assert "give either --host LOGIN or --on-login-node" in refused.stderr, refused.stderr


async def test_the_gateway_shows_a_pending_job_and_cancels_it(
    slurmspec: Any, slurmnet: Any, tmp_path: Path, held_partition: str
) -> None:
    """With pending kernels on, the gateway's kernel model carries the job's state and
    Slurm's reason while it waits; deleting the kernel then cancels the job."""
    from .test_gateway import ADMIN_TOKEN, Gateway, call

    name = slurmspec("gw-queued", resources={"partition": held_partition, "time": "00:10:00"})
    gw = Gateway(tmp_path, "--", "--MappingKernelManager.use_pending_kernels=True", users=False)
    gw.start()
    try:
        kernel = await call(gw.url, ADMIN_TOKEN, "POST", "/api/kernels", {"name": name})
        deadline = time.monotonic() + 30
        while True:
            model = await call(gw.url, ADMIN_TOKEN, "GET", f"/api/kernels/{kernel['id']}")
            phase = model.get("provisioner", {}).get("phase", "")
            if "pending (PartitionDown)" in phase:
                break
            assert time.monotonic() < deadline, model
            await asyncio.sleep(0.3)
        assert re.fullmatch(r"job \d+ pending \(PartitionDown\)", phase)
        assert model["provisioner"]["state"] == "PENDING"
        assert jobs_of(slurmnet, kernel["id"])
        await call(gw.url, ADMIN_TOKEN, "DELETE", f"/api/kernels/{kernel['id']}")
        wait_until(lambda: jobs_of(slurmnet, kernel["id"]) == [], 30, "the job's cancel")
    finally:
        gw.kill(signal.SIGTERM)


async def test_a_kernel_without_curve_on_a_node_is_refused(
    slurmspec: Any, store: Any, slurmnet: Any, legacy_kernel_python: str
) -> None:
    """Any cluster user can subscribe to a kernel's port on its node: under the default
    policy a kernel that ignores its Curve keys (ipykernel 6) is refused, saying what to
    upgrade and what to set, and its job is cancelled."""
    name = slurmspec("legacy", python=legacy_kernel_python)
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await start_is_refused_for_plain_text(km, legacy_kernel_python)
    wait_until(lambda: jobs_of(slurmnet, km.kernel_id) == [], 30, "the job to end")
    assert await store.list() == []


async def test_a_restart_after_the_job_was_cancelled_leaves_no_zombie(
    slurmspec: Any, store: Any, slurmnet: Any
) -> None:
    """The job was cancelled (scancel, an operator, a preemption): the restart cannot
    happen in it, fails, and the kernel is given up. It leaves the multi-kernel
    manager's list, its record and lease are gone, and no job or process is left."""
    mkm = orchestrator.AsyncMultiKernelManager(kernel_store=store)
    kernel_id = await mkm.start_kernel(kernel_name=slurmspec("cancelled"))
    job_id = mkm.get_kernel(kernel_id).provisioner.job_id
    try:
        slurmnet.run("login", ["scancel", job_id])
        wait_until(lambda: not jobs_of(slurmnet, kernel_id), 30, "the job's end")
        with pytest.raises(OrchestratorError):
            await mkm.restart_kernel(kernel_id, now=True)
        assert kernel_id not in mkm.list_kernel_ids()
        assert await store.get(kernel_id) is None
        wait_until(lambda: kernel_processes(kernel_id) == [], 30, "the kernel's end")
        with pytest.raises(KeyError):  # nothing to trip over: it is simply unknown
            await mkm.shutdown_kernel(kernel_id)
    finally:
        if kernel_id in mkm.list_kernel_ids():
            await mkm.shutdown_kernel(kernel_id, now=True)
    assert jobs_of(slurmnet, kernel_id) == []


async def test_certificates_and_the_notebooks_directory_on_the_cluster(
    slurmspec: Any, store: Any, slurmnet: Any, kernel_accounts: tuple[str, ...]
) -> None:
    """Alice's job logs in with a certificate minted for ko-alice (no key of hers on the
    gateway) and runs in the notebook's directory on the shared file system: it reads
    the file beside the notebook and writes one the server sees; a directory outside
    the map is refused before anything is submitted."""
    from .homes import user_homes

    with user_homes({"alice": "ko-alice", "bob": "ko-bob"}) as homes:
        name = slurmspec(
            "certificates",
            user="ko-{username}",
            identity_file="",
            certificate_authority=str(slurmnet.user_ca),
            home_dir=True,
            working_dir_map=homes.working_dir_map(),
        )

        def start(user: str, *rel: str) -> Any:
            km = orchestrator.AsyncKernelManager(
                kernel_name=name, kernel_store=store, multi_tenant=True
            )
            where = str(homes.server_dir(user, *rel))
            env = {**os.environ, "KERNEL_USERNAME": "alice", "KERNEL_WORKING_DIR": where}
            return km, km.start_kernel(env=env)

        alice, starting = start("alice", "sub")
        await starting
        try:
            assert {j["user"] for j in slurmnet.live_jobs()} >= {"ko-alice"}
            code = (
                "import os\nrows = open('data.csv').read().splitlines()\n"
                "open('result.txt', 'w').write(f'{len(rows) - 1} rows\\n')\nprint(os.getcwd())"
            )
            here = os.path.realpath(homes.kernel_dir("alice", "sub"))
            assert (await run(alice, code))["out"] == f"{here}\n"
            assert homes.server_dir("alice", "sub", "result.txt").read_text() == "2 rows\n"
            peek = await run(alice, PEEK.format(path=str(homes.kernel_dir("bob"))))
            assert peek["out"] == "refused\n"  # bob's home is not alice's to list
        finally:
            await alice.shutdown_kernel(now=True)
        wait_until(lambda: jobs_of(slurmnet, alice.kernel_id) == [], 30, "the job's end")

        _, starting = start("bob", "sub")
        with pytest.raises(OrchestratorError, match="under none of the directories"):
            await starting
        assert await store.list() == []
