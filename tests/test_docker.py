"""The Docker provisioner against a real Docker Engine, with real kernels in containers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import docker
import jupyter_client
import pytest

import orchestrator
from orchestrator.errors import KernelStartError, OrchestratorError
from orchestrator.labels import LABEL_INSTANCE, LABEL_KERNEL_ID

from .conftest import SESSION_INSTANCES, write_kernelspec
from .helpers import stream_output

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("docker_engine", "jupyter_env")]
CLI = str(Path(sys.executable).with_name("kernel-orchestrator"))


@pytest.fixture
def dclient() -> Any:
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture
def pyspec(jupyter_env: dict[str, str]) -> str:
    write_kernelspec(
        jupyter_env["JUPYTER_DATA_DIR"],
        "pydock",
        "docker-provisioner",
        {"image": "kernel-orchestrator/kernel-python:latest"},
    )
    return "pydock"


def our_containers(client: Any, kernel_id: str | None = None) -> list[Any]:
    """This test's containers: by kernel id, else every one of this session's stores."""
    if kernel_id:
        label = f"{LABEL_KERNEL_ID}={kernel_id}"
        return client.containers.list(all=True, filters={"label": label})
    return [
        c
        for c in client.containers.list(all=True, filters={"label": LABEL_KERNEL_ID})
        if c.labels.get(LABEL_INSTANCE) in SESSION_INSTANCES
    ]


async def run(km: Any, code: str, timeout: float = 60) -> dict[str, Any]:
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        out: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])

        reply = await kc.execute_interactive(code, timeout=timeout, output_hook=hook)
        return {**reply["content"], "out": "".join(out)}
    finally:
        kc.stop_channels()


async def test_lifecycle_in_a_container(pyspec: str, store: Any, dclient: Any) -> None:
    km = orchestrator.AsyncKernelManager(kernel_name=pyspec, kernel_store=store)
    await km.start_kernel()
    try:
        (container,) = our_containers(dclient, km.kernel_id)
        assert container.status == "running"
        assert container.labels[LABEL_INSTANCE] == store.instance_id
        result = await run(km, "import os, socket; print(os.getuid(), socket.gethostname())")
        assert result["out"].split()[0] == "1000"
        assert result["out"].split()[1] == container.id[:12]

        assert (await run(km, "state = 5"))["status"] == "ok"
        ports = {
            ch: getattr(km, f"{ch}_port") for ch in ("shell", "iopub", "stdin", "hb", "control")
        }
        await km.restart_kernel()
        assert {ch: getattr(km, f"{ch}_port") for ch in ports} == ports
        result = await run(km, "state")
        assert result["ename"] == "NameError"
        assert len(our_containers(dclient, km.kernel_id)) == 1
    finally:
        await km.shutdown_kernel()
    assert our_containers(dclient, km.kernel_id) == []
    assert await store.get(km.kernel_id) is None


async def test_an_idle_kernel_costs_its_engine_no_request(
    pyspec: str, store: Any, dclient: Any
) -> None:
    """A Docker kernel's liveness comes from the engine's one shared event stream: its
    polls ask the engine nothing, and a container killed behind our back is seen dead,
    with its exit status, from the stream alone."""
    from provisioners.docker import watcher

    km = orchestrator.AsyncKernelManager(kernel_name=pyspec, kernel_store=store)
    await km.start_kernel()
    try:
        cid = km.provisioner.container_id
        containers = watcher.shared_watcher(km.provisioner.engine_url)
        deadline = time.monotonic() + 30
        while containers.status(cid) != (True, None):  # (the stream's start event)
            assert time.monotonic() < deadline, (containers.failure, containers.status(cid))
            await asyncio.sleep(0.05)
        asked = containers.inspects
        for _ in range(100):
            assert await km.is_alive()
        assert containers.inspects == asked
        events = containers.events
        dclient.api.kill(cid, signal="SIGKILL")
        deadline = time.monotonic() + watcher.HEAL_SECONDS / 4  # (not the next list's news)
        while containers.status(cid) != (True, 137):  # the die event, with its code
            assert time.monotonic() < deadline, containers.status(cid)
            await asyncio.sleep(0.05)
        assert containers.events > events
    finally:
        await km.shutdown_kernel(now=True)
    assert our_containers(dclient, km.kernel_id) == []
    assert await store.get(km.kernel_id) is None


async def test_key_and_host_environment_never_reach_the_container(
    pyspec: str, store: Any, dclient: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCHESTRATOR_DB_PASSWORD", "hunter2")
    monkeypatch.setenv("KERNEL_ALREADY_HERE", "orchestrator-own")
    hostile = "$(touch /tmp/pwned); `id`; ' \" \n -- {connection_file}"
    env = {**os.environ, "KERNEL_USERNAME": "alice", "KERNEL_WEIRD": hostile, "NOT_ALLOWED": "x"}
    km = orchestrator.AsyncKernelManager(kernel_name=pyspec, kernel_store=store)
    await km.start_kernel(env=env)
    try:
        key = km.session.key.decode()
        (container,) = our_containers(dclient, km.kernel_id)
        inspect = json.dumps(dclient.api.inspect_container(container.id))
        assert key not in inspect
        assert "hunter2" not in inspect and "NOT_ALLOWED" not in inspect
        code = (
            "import os, json, stat; st = os.stat('/run/kernel/connection.json');"
            "print(json.dumps({'env': dict(os.environ), 'mode': oct(stat.S_IMODE(st.st_mode)),"
            " 'argv': open('/proc/1/cmdline').read()}))"
        )
        seen = json.loads((await run(km, code))["out"])
        assert seen["mode"] == "0o600"
        assert seen["env"]["KERNEL_USERNAME"] == "alice"
        assert seen["env"]["KERNEL_WEIRD"] == hostile  # verbatim, never interpreted
        for leaked in (
            "ORCHESTRATOR_DB_PASSWORD",
            "NOT_ALLOWED",
            "KERNEL_ALREADY_HERE",
            "JUPYTER_RUNTIME_DIR",
            "KERNEL_ORCHESTRATOR_STORE",
        ):
            assert leaked not in seen["env"]
        assert key not in seen["argv"] and key not in json.dumps(seen["env"])
        assert (await run(km, "import os; print(os.path.exists('/tmp/pwned'))"))["out"] == "False\n"
    finally:
        await km.shutdown_kernel(now=True)


async def test_resource_limits_and_overrides(
    jupyter_env: dict[str, str], store: Any, dclient: Any
) -> None:
    write_kernelspec(
        jupyter_env["JUPYTER_DATA_DIR"],
        "pylimits",
        "docker-provisioner",
        {
            "cpus": 0.5,
            "memory": "256m",
            "labels": {"team": "ml"},
            "allowed_overrides": ["memory", "startup_timeout"],
            "max_memory": "512m",
        },
    )
    km = orchestrator.AsyncKernelManager(kernel_name="pylimits", kernel_store=store)
    # Jupyter Server sends the notebook's folder with every start: a hint, ignored when
    # the kernelspec does not let clients choose the working directory.
    hint = {"KERNEL_WORKING_DIR": "/home/someone/notebooks"}
    await km.start_kernel(env={**os.environ, "KERNEL_MEMORY": "384m", **hint})
    try:
        (container,) = our_containers(dclient, km.kernel_id)
        assert container.attrs["Config"]["WorkingDir"] != hint["KERNEL_WORKING_DIR"]
        host = container.attrs["HostConfig"]
        assert host["NanoCpus"] == 500_000_000
        assert host["Memory"] == 384 * 1024 * 1024
        assert host["CapDrop"] == ["ALL"] and "no-new-privileges" in host["SecurityOpt"]
        assert container.labels["team"] == "ml"
    finally:
        await km.shutdown_kernel(now=True)

    km = orchestrator.AsyncKernelManager(kernel_name="pylimits", kernel_store=store)
    with pytest.raises(OrchestratorError, match="KERNEL_MEMORY='2g' is above the limit 512m"):
        await km.start_kernel(env={**os.environ, "KERNEL_MEMORY": "2g"})
    km = orchestrator.AsyncKernelManager(kernel_name="pylimits", kernel_store=store)
    with pytest.raises(OrchestratorError, match="KERNEL_CPUS is not allowed for this kernelspec"):
        await km.start_kernel(env={**os.environ, "KERNEL_CPUS": "64"})
    assert our_containers(dclient) == []


@pytest.mark.parametrize(
    "config, env, argv, message",
    [
        (
            {"image": "kernel-orchestrator/no-such-image:1"},
            {},
            None,
            "image 'kernel-orchestrator/no-such-image:1' is not on the Docker engine",
        ),
        (
            {"image": "kernel-orchestrator/no-such-image:1", "pull_policy": "never"},
            {},
            None,
            "is not present on the Docker engine",
        ),
        (
            {},
            {"KERNEL_IMAGE": "evil/miner:latest"},
            None,
            "image 'evil/miner:latest' is not allowed (allowed: kernel-orchestrator/kernel-python",
        ),
        ({}, {"KERNEL_IMAGE": "UPPER;rm -rf /"}, None, "is not a valid image reference"),
        (
            {"docker_host": "tcp://127.0.0.1:9"},
            {},
            None,
            "Docker engine at tcp://127.0.0.1:9 is unreachable",
        ),
        (
            {},
            {"KERNEL_STARTUP_TIMEOUT": "100000"},
            None,
            "KERNEL_STARTUP_TIMEOUT='100000' must be > 0 and <= 600 seconds",
        ),
        # values a back-end would read as "no limit" at all
        (
            {"allowed_overrides": ["cpus", "memory"]},
            {"KERNEL_CPUS": "1e-12"},
            None,
            "KERNEL_CPUS='1e-12' is below the minimum of 0.01",
        ),
        (
            {"allowed_overrides": ["cpus"]},
            {"KERNEL_CPUS": "inf"},
            None,
            "KERNEL_CPUS='inf' must be a finite number above 0",
        ),
        (
            {"allowed_overrides": ["memory"]},
            {"KERNEL_MEMORY": "0"},
            None,
            "KERNEL_MEMORY '0' is below the minimum of 6m",
        ),
        ({"cpus": 1e-12}, {}, None, "cpus=1e-12 is below the minimum of 0.01"),
        ({"pids_limit": 0}, {}, None, "pids_limit=0 must be a finite number above 0"),
        ({"pids_limit": -1}, {}, None, "pids_limit=-1 must be a finite number above 0"),
        ({"pids_limit": 4}, {}, None, "pids_limit=4 is below the minimum of 16"),
    ],
)
async def test_failures_are_clear_and_leave_nothing(
    jupyter_env: dict[str, str],
    store: Any,
    dclient: Any,
    config: dict[str, Any],
    env: dict[str, str],
    argv: list[str] | None,
    message: str,
) -> None:
    extra = {"argv": argv} if argv else {}
    write_kernelspec(
        jupyter_env["JUPYTER_DATA_DIR"], "broken", "docker-provisioner", config, **extra
    )
    km = orchestrator.AsyncKernelManager(kernel_name="broken", kernel_store=store)
    with pytest.raises(OrchestratorError) as info:
        await km.start_kernel(env={**os.environ, **env})
    assert message in str(info.value)
    assert our_containers(dclient) == []
    assert await store.list() == []


async def test_shared_network_reachability(
    jupyter_env: dict[str, str], store: Any, dclient: Any
) -> None:
    network = dclient.networks.create(
        "ko-test-net", driver="bridge", labels={"kernel-orchestrator.test": "1"}
    )
    try:
        # The orchestrator fences only its own bridge: an operator's network is refused
        # until the operator says it is firewalled.
        write_kernelspec(
            jupyter_env["JUPYTER_DATA_DIR"],
            "pynet-unfenced",
            "docker-provisioner",
            {"reachability": "network", "network": "ko-test-net"},
        )
        unfenced = orchestrator.AsyncKernelManager(kernel_name="pynet-unfenced", kernel_store=store)
        with pytest.raises(KernelStartError, match="fences only its own kernel bridge"):
            await unfenced.start_kernel()
        assert our_containers(dclient, unfenced.kernel_id) == []
        write_kernelspec(
            jupyter_env["JUPYTER_DATA_DIR"],
            "pynet",
            "docker-provisioner",
            {"reachability": "network", "network": "ko-test-net", "egress": "unmanaged"},
        )
        km = orchestrator.AsyncKernelManager(kernel_name="pynet", kernel_store=store)
        await km.start_kernel()
        try:
            (container,) = our_containers(dclient, km.kernel_id)
            assert container.attrs["NetworkSettings"]["Ports"] in ({}, None) or not any(
                container.attrs["NetworkSettings"]["Ports"].values()
            )
            ip = container.attrs["NetworkSettings"]["Networks"]["ko-test-net"]["IPAddress"]
            assert km.ip == ip and km.shell_port == 50001
            # Other members of the operator's network can reach the ports: encrypted.
            assert km.get_connection_info().get("curve_secretkey")
            assert (await run(km, "print(6 * 7)"))["out"] == "42\n"
        finally:
            await km.shutdown_kernel(now=True)
    finally:
        network.remove()


SPY_SUBSCRIBE = """
import json, socket, zmq
spy = zmq.Context().socket(zmq.SUB)
spy.setsockopt(zmq.SUBSCRIBE, b"")
for url in {urls!r}:
    spy.connect(url)
reached = {{}}
for host, port in {tcp!r}:
    try:
        socket.create_connection((host, port), timeout=3).close()
        reached[f"{{host}}:{{port}}"] = True
    except OSError:
        reached[f"{{host}}:{{port}}"] = False
print(json.dumps(reached))
"""
SPY_READ = """
import json
heard = []
while spy.poll(3000):
    heard.append(repr(spy.recv_multipart()[-1][:80]))
print(json.dumps(heard))
"""


async def test_a_kernel_cannot_reach_another_users_kernel(
    pyspec: str, store: Any, dclient: Any
) -> None:
    """Alice's kernel tries Bob's IOPub and other ports, by container address and by
    the engine host's address; it hears nothing, while the orchestrator does."""
    alice = orchestrator.AsyncKernelManager(kernel_name=pyspec, kernel_store=store)
    bob = orchestrator.AsyncKernelManager(kernel_name=pyspec, kernel_store=store)
    await alice.start_kernel(env={**os.environ, "KERNEL_USERNAME": "alice"})
    await bob.start_kernel(env={**os.environ, "KERNEL_USERNAME": "bob"})
    try:
        (theirs,) = our_containers(dclient, bob.kernel_id)
        (mine,) = our_containers(dclient, alice.kernel_id)
        assert mine.attrs["HostConfig"]["PidsLimit"] == 1024
        networks = theirs.attrs["NetworkSettings"]["Networks"]
        assert list(networks) == ["kernel-orchestrator-kernels"]
        their_ip = networks["kernel-orchestrator-kernels"]["IPAddress"]
        gateway_ip = networks["kernel-orchestrator-kernels"]["Gateway"]
        urls = [f"tcp://{their_ip}:50002", f"tcp://{gateway_ip}:{bob.iopub_port}"]
        tcp = [(their_ip, 50002), (their_ip, 50001), (gateway_ip, bob.iopub_port)]
        reached = json.loads((await run(alice, SPY_SUBSCRIBE.format(urls=urls, tcp=tcp)))["out"])
        assert reached and not any(reached.values()), reached

        # The orchestrator (the engine host) does hear Bob's output: the spy would too.
        import zmq
        import zmq.asyncio

        control = zmq.asyncio.Context.instance().socket(zmq.SUB)
        control.setsockopt(zmq.SUBSCRIBE, b"")
        control.connect(f"tcp://127.0.0.1:{bob.iopub_port}")
        try:
            await asyncio.sleep(0.5)
            assert (await run(bob, "print('bob-secret-output')"))["out"] == "bob-secret-output\n"
            frames = []
            while await control.poll(2000):
                frames.append(b"".join(await control.recv_multipart()))
            assert any(b"bob-secret-output" in f for f in frames)
        finally:
            control.close(linger=0)
        heard = json.loads((await run(alice, SPY_READ))["out"])
        assert heard == []
    finally:
        await asyncio.gather(alice.shutdown_kernel(now=True), bob.shutdown_kernel(now=True))
    assert our_containers(dclient) == []


async def test_reattach_after_orchestrator_is_killed(pyspec: str, store: Any, dclient: Any) -> None:
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, sys\n"
            "from orchestrator import AsyncKernelManager\n"
            "async def main():\n"
            "    km = AsyncKernelManager(kernel_name='pydock')\n"
            "    await km.start_kernel()\n"
            "    kc = km.client(); kc.start_channels(); await kc.wait_for_ready(timeout=60)\n"
            "    await kc.execute_interactive('kept = 99', timeout=60)\n"
            "    print(km.kernel_id, flush=True)\n"
            "    await asyncio.sleep(3600)\n"
            "asyncio.run(main())\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert starter.stdout is not None
    kernel_id = starter.stdout.readline().strip()
    starter.send_signal(signal.SIGKILL)
    starter.wait()
    starter.stdout.close()
    (container,) = our_containers(dclient, kernel_id)

    mkm = orchestrator.AsyncMultiKernelManager(kernel_store=store)
    report = await mkm.restore_kernels()
    assert report.reattached == [kernel_id]
    try:
        km = mkm.get_kernel(kernel_id)
        assert (await run(km, "print(kept)"))["out"] == "99\n"
        assert [c.id for c in our_containers(dclient, kernel_id)] == [container.id]
    finally:
        await mkm.shutdown_all()
    assert our_containers(dclient) == []


def ko(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL
    )


def test_cli_and_gc_after_a_crash(pyspec: str, store: Any, dclient: Any, tmp_path: Path) -> None:
    stale = ko("start", pyspec).stdout.strip()
    orphan = ko("start", pyspec).stdout.strip()
    theirs_store = f"sqlite:///{tmp_path / 'theirs.db'}"
    theirs = subprocess.run(
        [CLI, "--store", theirs_store, "start", pyspec], capture_output=True, text=True, timeout=180
    ).stdout.strip()
    try:
        assert ko("exec", stale, "print('hi')").stdout == "hi\n"
        # the stale one's container vanishes behind our back; the orphan loses its record
        our_containers(dclient, stale)[0].remove(force=True)
        asyncio.run(store.delete(orphan))
        out = ko("gc", "--grace", "0").stdout
        assert f"removed stale record {stale}" in out
        assert f"(kernel {orphan})" in out and "container kernel-" in out
        assert our_containers(dclient, orphan) == []
        assert len(our_containers(dclient, theirs)) == 1  # another deployment's: untouched
        assert json.loads(ko("list", "--json").stdout) == []
    finally:
        subprocess.run([CLI, "--store", theirs_store, "shutdown", theirs], timeout=120)
    assert our_containers(dclient) == []


def test_kernelspec_install_and_stock_jupyter_client(
    jupyter_env: dict[str, str], dclient: Any
) -> None:
    """A stock jupyter_client manager (as in Jupyter Server) picks the provisioner up."""
    result = ko(
        "kernelspec",
        "install",
        "docker-provisioner",
        "--name",
        "dock",
        "--memory",
        "300m",
        "--allow-image",
        "kernel-orchestrator/*",
    )
    assert result.returncode == 0, result.stderr
    spec = json.loads((Path(result.stdout.strip()) / "kernel.json").read_text())
    assert spec["metadata"]["kernel_provisioner"] == {
        "provisioner_name": "docker-provisioner",
        "config": {
            "image": "kernel-orchestrator/kernel-python:latest",
            "memory": "300m",
            "image_allowlist": [
                "kernel-orchestrator/kernel-python:latest",
                "kernel-orchestrator/*",
            ],
        },
    }
    km = jupyter_client.KernelManager(kernel_name="dock")
    km.start_kernel()
    try:
        kc = km.client()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        reply = kc.execute_interactive("print(1 + 1)", timeout=60, output_hook=lambda m: None)
        assert reply["content"]["status"] == "ok"
        kc.stop_channels()
        (container,) = our_containers(dclient, km.kernel_id)
        assert LABEL_INSTANCE not in container.labels  # no orchestrator behind it
    finally:
        km.shutdown_kernel()
    assert our_containers(dclient, km.kernel_id) == []


async def test_kernel_id_names_the_container(pyspec: str, store: Any, dclient: Any) -> None:
    km = orchestrator.AsyncKernelManager(kernel_name=pyspec, kernel_store=store)
    await km.start_kernel(kernel_id="My.Kernel_1")
    try:
        (container,) = our_containers(dclient, "My.Kernel_1")
        assert container.name == "kernel-My.Kernel_1"
    finally:
        await km.shutdown_kernel(now=True)


async def test_start_error_types(jupyter_env: dict[str, str], store: Any) -> None:
    write_kernelspec(
        jupyter_env["JUPYTER_DATA_DIR"], "named-user", "docker-provisioner", {"user": "jovyan"}
    )
    km = orchestrator.AsyncKernelManager(kernel_name="named-user", kernel_store=store)
    with pytest.raises(OrchestratorError, match="must be numeric uid"):
        await km.start_kernel()
    assert issubclass(KernelStartError, OrchestratorError)


async def test_remote_engine_over_ssh(
    jupyter_env: dict[str, str], store: Any, dclient: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DOCKER_HOST=ssh://: the SDK drives the engine over SSH and our tunnel layer carries
    the kernel ports (published on the engine host's loopback) back to local ports."""
    from orchestrator.tunnels import get_tunneler
    from orchestrator.tunnels.ssh import pool

    from .loopback_sshd import LoopbackSSHD

    sshd = LoopbackSSHD()
    try:
        monkeypatch.setenv("HOME", str(sshd.home))
        # Kernels' egress on a remote engine host cannot be fenced from here: refused,
        # naming the setting, until the operator says the host is firewalled.
        write_kernelspec(
            jupyter_env["JUPYTER_DATA_DIR"],
            "remote-unfenced",
            "docker-provisioner",
            {"docker_host": "ssh://dockerhost"},
        )
        unfenced = orchestrator.AsyncKernelManager(
            kernel_name="remote-unfenced", kernel_store=store
        )
        with pytest.raises(KernelStartError) as info:
            await unfenced.start_kernel()
        assert "is not this machine's" in str(info.value)
        assert "set egress = 'unmanaged'" in str(info.value)
        assert our_containers(dclient, unfenced.kernel_id) == []
        write_kernelspec(
            jupyter_env["JUPYTER_DATA_DIR"],
            "remote-engine",
            "docker-provisioner",
            {"docker_host": "ssh://dockerhost", "egress": "unmanaged"},
        )
        km = orchestrator.AsyncKernelManager(kernel_name="remote-engine", kernel_store=store)
        await km.start_kernel()
        try:
            assert len(our_containers(dclient, km.kernel_id)) == 1
            published = km.provisioner.published_ports
            assert km.provisioner.mode == "ssh"
            assert set(published.values()).isdisjoint(km.provisioner.host_ports.values())
            assert (await run(km, "x = 6; print(x * 7)"))["out"] == "42\n"
            # another process re-attaches: the tunnel is rebuilt on the same local ports
            record = await store.get(km.kernel_id)
            km.detach()
            await get_tunneler("ssh://dockerhost").close(km.kernel_id)  # as if we exited
            km2 = orchestrator.AsyncKernelManager(kernel_name="remote-engine", kernel_store=store)
            await km2.reattach(record)
            assert km2.provisioner.host_ports == km.provisioner.host_ports
            assert (await run(km2, "print(x)"))["out"] == "6\n"
            await km2.shutdown_kernel()
        finally:
            if km.has_kernel and our_containers(dclient, km.kernel_id):
                await km.shutdown_kernel(now=True)
        assert our_containers(dclient, km.kernel_id) == []
        assert pool.connections() == []
    finally:
        sshd.stop()


async def test_an_unreachable_engine_stalls_only_itself(
    jupyter_env: dict[str, str], store: Any, pyspec: str
) -> None:
    """An engine that accepts connections and never answers (on loopback) ties up its own
    thread pool only: a kernel on the real engine starts meanwhile, the store answers
    and the event loop is never blocked (the start above goes on)."""
    import socket

    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)
    write_kernelspec(
        jupyter_env["JUPYTER_DATA_DIR"],
        "stuck",
        "docker-provisioner",
        {"image": "kernel-orchestrator/kernel-python:latest",
         "docker_host": f"tcp://127.0.0.1:{hole.getsockname()[1]}"},
    )  # fmt: skip
    stuck = orchestrator.AsyncKernelManager(kernel_name="stuck", kernel_store=store)
    pending = asyncio.ensure_future(stuck.start_kernel())
    km = orchestrator.AsyncKernelManager(kernel_name=pyspec, kernel_store=store)
    try:
        await asyncio.sleep(0.5)
        await asyncio.wait_for(km.start_kernel(), 60)
        assert (await run(km, "print('fine')"))["out"] == "fine\n"
        assert await store.get(km.kernel_id) is not None
        assert not pending.done()  # still waiting on the silent engine
    finally:
        hole.close()  # the silent engine goes away: its start fails
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pending, 90)
        if km.has_kernel:
            await km.shutdown_kernel(now=True)
    assert await store.list() == []


async def test_remote_engine_survives_a_30s_network_cut(
    jupyter_env: dict[str, str], store: Any, dclient: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Docker engine reached over SSH: the path to its SSH port drops every packet for
    30 s while a cell runs (iptables DROP, nothing reset); the cell's output, produced
    during the cut, arrives once the path is back."""
    from .loopback_sshd import LoopbackSSHD

    sshd = LoopbackSSHD()
    rules = [
        ["INPUT", "-i", "lo", "-p", "tcp", "--dport", str(sshd.port), "-j", "DROP"],
        ["INPUT", "-i", "lo", "-p", "tcp", "--sport", str(sshd.port), "-j", "DROP"],
    ]
    try:
        monkeypatch.setenv("HOME", str(sshd.home))
        write_kernelspec(
            jupyter_env["JUPYTER_DATA_DIR"],
            "remote-cut",
            "docker-provisioner",
            {"docker_host": "ssh://dockerhost", "egress": "unmanaged"},
        )
        km = orchestrator.AsyncKernelManager(kernel_name="remote-cut", kernel_store=store)
        await km.start_kernel()
        try:
            assert (await run(km, "kept = 21"))["status"] == "ok"
            kc = km.client()
            kc.start_channels()
            await kc.wait_for_ready(timeout=30)
            msg_id = kc.execute("import time\ntime.sleep(3)\nprint(kept * 2)")
            await asyncio.sleep(1)
            for rule in rules:
                subprocess.run(["iptables", "-I", *rule], check=True)
            await asyncio.sleep(30)
            for rule in rules:
                subprocess.run(["iptables", "-D", *rule], check=True)
            rules = []
            reply = await kc.get_shell_msg(timeout=120)
            assert reply["parent_header"]["msg_id"] == msg_id
            assert reply["content"]["status"] == "ok"
            assert await stream_output(kc, msg_id) == "42\n"
            kc.stop_channels()
            assert (await run(km, "print(kept)"))["out"] == "21\n"
        finally:
            for rule in rules:
                subprocess.run(["iptables", "-D", *rule], check=False)
            await km.shutdown_kernel(now=True)
        assert our_containers(dclient, km.kernel_id) == []
    finally:
        sshd.stop()


HOST_SERVICE_PROBE = """
import json, socket
seen = {{}}
for name, (host, port) in {targets}.items():
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, port)); seen[name] = "connected"
    except OSError as e:
        seen[name] = type(e).__name__
    finally:
        s.close()
print(json.dumps(seen))
"""


async def test_kernels_reach_neither_the_engine_host_nor_private_networks(
    pyspec: str, store: Any, dclient: Any
) -> None:
    """A service on the engine host (every address) is out of a kernel's reach; the
    metadata service and private ranges are rejected on the host, before any packet
    leaves it; the orchestrator still reaches the kernel."""
    import socket

    from provisioners.docker import egress

    service = socket.socket()
    service.bind(("0.0.0.0", 0))
    service.listen(8)
    port = service.getsockname()[1]
    km = orchestrator.AsyncKernelManager(kernel_name=pyspec, kernel_store=store)
    await km.start_kernel()
    try:
        (mine,) = our_containers(dclient, km.kernel_id)
        net = mine.attrs["NetworkSettings"]["Networks"]["kernel-orchestrator-kernels"]
        targets = {"host-bridge": (net["Gateway"], port)}
        seen = json.loads((await run(km, HOST_SERVICE_PROBE.format(targets=targets)))["out"])
        assert seen["host-bridge"] != "connected", seen
        network = dclient.api.inspect_network("kernel-orchestrator-kernels")
        options = network.get("Options") or {}
        bridge = options.get("com.docker.network.bridge.name") or f"br-{network['Id'][:12]}"
        rules = subprocess.run(
            ["iptables", "-S", egress.EGRESS_CHAIN], capture_output=True, text=True, check=True
        ).stdout
        for blocked in ("169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"):
            assert f"-A {egress.EGRESS_CHAIN} -d {blocked} -j REJECT" in rules, rules
        hooks = subprocess.run(
            ["iptables", "-S"], capture_output=True, text=True, check=True
        ).stdout
        assert f"-A DOCKER-USER -i {bridge} -j {egress.EGRESS_CHAIN}" in hooks
        assert f"-A INPUT -i {bridge} -j {egress.HOST_CHAIN}" in hooks
        assert (await run(km, "print('still served')"))["out"] == "still served\n"
        # A firewall reload drops the rules: the next start puts them back.
        for chain in (egress.EGRESS_CHAIN, egress.HOST_CHAIN):
            subprocess.run(["iptables", "-F", chain], check=True)
        subprocess.run(
            ["iptables", "-D", "INPUT", "-i", bridge, "-j", egress.HOST_CHAIN], check=True
        )
        await km.restart_kernel()  # a restart starts a new container
        again = subprocess.run(["iptables", "-S"], capture_output=True, text=True).stdout
        assert f"-A {egress.EGRESS_CHAIN} -d 169.254.0.0/16 -j REJECT" in again
        assert f"-A INPUT -i {bridge} -j {egress.HOST_CHAIN}" in again
    finally:
        service.close()
        await km.shutdown_kernel(now=True)
    assert our_containers(dclient) == []


def test_egress_settings_are_checked() -> None:
    from provisioners.docker import egress

    assert egress.check_networks(["10.2.0.5", "10.3.0.0/16"], "x") == [
        "10.2.0.5/32",
        "10.3.0.0/16",
    ]
    for bad, message in (("nope", "is not a network"), ("::1/128", "only IPv4")):
        with pytest.raises(egress.EgressError, match=message):
            egress.check_networks([bad], "DockerProvisioner.egress_allow")
    assert "not this machine's" in egress.can_manage("ssh://engine")
    assert "not this machine's" in egress.can_manage("tcp://10.0.0.1:2376")


async def test_disk_caps_where_the_engine_can_enforce_them(
    jupyter_env: dict[str, str], store: Any, dclient: Any
) -> None:
    """'auto' caps the writable layer where the storage driver can (xfs with pquota),
    and starts uncapped elsewhere; an explicit cap an engine cannot enforce is refused,
    naming the setting, with nothing left behind."""
    image = "kernel-orchestrator/kernel-python:latest"
    write_kernelspec(
        jupyter_env["JUPYTER_DATA_DIR"], "auto-disk", "docker-provisioner", {"image": image}
    )
    km = orchestrator.AsyncKernelManager(kernel_name="auto-disk", kernel_store=store)
    await km.start_kernel()
    try:
        (mine,) = our_containers(dclient, km.kernel_id)
        quota = (mine.attrs["HostConfig"].get("StorageOpt") or {}).get("size")
        info = dclient.info()
        backing = dict(info.get("DriverStatus") or []).get("Backing Filesystem", "")
        assert quota == ("10g" if backing == "xfs" else None), (backing, quota)
        assert (await run(km, "print('ok')"))["out"] == "ok\n"
    finally:
        await km.shutdown_kernel(now=True)
    if backing == "xfs":
        return
    write_kernelspec(
        jupyter_env["JUPYTER_DATA_DIR"],
        "fixed-disk",
        "docker-provisioner",
        {"image": image, "disk": "5g"},
    )
    km = orchestrator.AsyncKernelManager(kernel_name="fixed-disk", kernel_store=store)
    with pytest.raises(KernelStartError, match="disk = '5g' cannot be enforced by this engine"):
        await km.start_kernel()
    assert our_containers(dclient, km.kernel_id) == []


NOTEBOOK_CELL = """
import os
rows = open("data.csv").read().splitlines()
open("result.txt", "w").write(f"{len(rows) - 1} rows\\n")
print(os.getcwd(), "bob" in os.listdir("/home"), os.path.isdir("/scratch"))
"""


async def test_each_users_storage_and_the_notebooks_directory(
    jupyter_env: dict[str, str], store: Any, dclient: Any
) -> None:
    """Alice's kernel mounts her home (a bind mount under volume_roots) and a scratch
    volume made for her on first use, and starts in the notebook's directory there: it
    reads the file beside the notebook and writes one the server sees. Bob's home is not
    in her container; a volume labelled for someone else, a shared writable entry and a
    bind source outside the roots are refused before anything is made."""
    from .homes import user_homes

    scratch = "ko-test-scratch-{username}"
    with user_homes({"alice": "1000", "bob": "1001", "carol": "1002"}) as homes:
        base = {
            "image": "kernel-orchestrator/kernel-python:latest",
            "volume_roots": [str(homes.served)],
            "working_dir_map": {f"{homes.served}/{{username}}": "/home/{username}"},
        }
        volumes = [f"{homes.served}/{{username}}:/home/{{username}}", f"{scratch}:/scratch"]
        write_kernelspec(
            jupyter_env["JUPYTER_DATA_DIR"],
            "homes",
            "docker-provisioner",
            {**base, "volumes": volumes},
        )

        def manager(name: str = "homes") -> Any:
            return orchestrator.AsyncKernelManager(
                kernel_name=name, kernel_store=store, multi_tenant=True
            )

        def env(user: str, *rel: str) -> dict[str, str]:
            where = str(homes.server_dir(user, *rel))
            return {**os.environ, "KERNEL_USERNAME": user, "KERNEL_WORKING_DIR": where}

        alice = manager()
        try:
            await alice.start_kernel(env=env("alice", "sub"))
            out = (await run(alice, NOTEBOOK_CELL))["out"]
            assert out == "/home/alice/sub False True\n", out
            assert homes.server_dir("alice", "sub", "result.txt").read_text() == "2 rows\n"
            volume = dclient.volumes.get("ko-test-scratch-alice")
            assert volume.attrs["Labels"]["kernel-orchestrator.volume-owner"] == "alice"
            await alice.restart_kernel()  # the same directory and storage after a restart
            assert (await run(alice, "import os; print(os.getcwd())"))["out"] == "/home/alice/sub\n"
        finally:
            await alice.shutdown_kernel(now=True)
            with contextlib.suppress(docker.errors.NotFound):
                dclient.volumes.get("ko-test-scratch-alice").remove()

        squatted = dclient.volumes.create(
            "ko-test-scratch-carol", labels={"kernel-orchestrator.volume-owner": "mallory"}
        )
        try:
            with pytest.raises(KernelStartError, match="belongs to 'mallory', not 'carol'"):
                await manager().start_kernel(env={**os.environ, "KERNEL_USERNAME": "carol"})
        finally:
            squatted.remove()

        refused = {
            "shared": ([f"{scratch}:/scratch", "ko-test-everyone:/shared"], "every user's"),
            "outside": (["/tmp/{username}:/home/{username}"], "under none of volume_roots"),
        }
        for name, (entries, why) in refused.items():
            write_kernelspec(
                jupyter_env["JUPYTER_DATA_DIR"],
                name,
                "docker-provisioner",
                {**base, "volumes": entries},
            )
            with pytest.raises(KernelStartError, match=why):
                await manager(name).start_kernel(env=env("alice"))
        with pytest.raises(KernelStartError, match="under none of the directories"):
            await manager().start_kernel(env=env("bob", "sub") | {"KERNEL_USERNAME": "alice"})
    assert our_containers(dclient) == []
    assert await store.list() == []
    assert not dclient.volumes.list(filters={"name": "ko-test-"})
