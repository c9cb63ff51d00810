"""The SSH provisioner and tunnel layer against real sshd hosts in network namespaces."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import orchestrator
from orchestrator import procinfo
from orchestrator.errors import OrchestratorError

from .conftest import write_kernelspec
from .helpers import start_is_refused_for_plain_text, stream_output
from .test_docker import run

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("jupyter_env")]
CLI = str(Path(sys.executable).with_name("kernel-orchestrator"))


def kernel_processes(kernel_id: str) -> list[int]:
    """Processes of a remote kernel (the test hosts share this machine's PID space)."""
    return [
        pid
        for pid in procinfo.all_pids()
        if procinfo.environ(pid).get("KERNEL_ORCHESTRATOR_KERNEL_ID") == kernel_id
        and procinfo.is_running(pid)
    ]


@pytest.fixture
def remote_dir(tmp_path: Path) -> Path:
    return tmp_path / "remote-kernels"


@pytest.fixture
def sshspec(sshnet: Any, jupyter_env: dict[str, str], remote_dir: Path):  # type: ignore[no-untyped-def]
    """Write an ssh kernelspec named ``name`` for the given hosts and extra config."""

    def make(name: str, hosts: list[str], **config: Any) -> str:
        base = {
            "hosts": hosts,
            "ssh_config": str(sshnet.ssh_config),
            "python": sys.executable,
            "remote_dir": str(remote_dir),
            "connect_timeout": 5,
        }
        base.update(config)
        write_kernelspec(jupyter_env["JUPYTER_DATA_DIR"], name, "ssh-provisioner", base)
        return name

    return make


async def test_lifecycle_on_a_remote_host(
    sshspec: Any, store: Any, sshnet: Any, remote_dir: Path
) -> None:
    name = sshspec("on-a", ["hosta"])
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await km.start_kernel()
    kid = km.kernel_id
    try:
        assert km.provisioner.host == "hosta" and km.ip == "127.0.0.1"
        # the kernel listens on hosta's own loopback (its ports are numbered there, apart
        # from ours: the two sets may share a number by chance, so ask hosta itself)
        remote_ports = km.provisioner.remote["ports"]
        listening = sshnet.run("hosta", ["ss", "-Hltn"]).stdout
        for port in remote_ports.values():
            assert f"127.0.0.1:{port} " in listening, (port, listening)
        netns = sshnet.run("hosta", ["ip", "netns", "identify", str(km.provisioner.remote["pid"])])
        assert netns.stdout.strip() == sshnet.hosts["hosta"].ns
        conn_file = Path(km.provisioner.remote["connection_file"])
        assert oct(conn_file.stat().st_mode & 0o777) == "0o600"
        assert oct(conn_file.parent.stat().st_mode & 0o777) == "0o700"

        assert (await run(km, "state = 3"))["status"] == "ok"

        ports = (km.shell_port, km.iopub_port, km.stdin_port, km.hb_port, km.control_port)
        old_pid = km.provisioner.remote["pid"]
        await km.restart_kernel()
        assert (km.shell_port, km.iopub_port, km.stdin_port, km.hb_port, km.control_port) == ports
        assert km.provisioner.remote["pid"] != old_pid
        assert (await run(km, "state"))["ename"] == "NameError"
    finally:
        await km.shutdown_kernel()
    assert kernel_processes(kid) == []
    assert not (remote_dir / kid).exists()
    assert await store.get(kid) is None


async def test_round_robin_and_fewest_kernels(sshspec: Any, store: Any) -> None:
    rr = sshspec("rr", ["hosta", "hostb"])
    kms = [orchestrator.AsyncKernelManager(kernel_name=rr, kernel_store=store) for _ in range(2)]
    try:
        for km in kms:
            await km.start_kernel()
        assert sorted(km.provisioner.host for km in kms) == ["hosta", "hostb"]
        few = sshspec("few", ["hosta", "hostb"], host_selection="fewest-kernels")
        km3 = orchestrator.AsyncKernelManager(kernel_name=few, kernel_store=store)
        kms.append(km3)
        await km3.start_kernel()
        busiest = "hosta"
        km4 = orchestrator.AsyncKernelManager(kernel_name=few, kernel_store=store)
        kms.append(km4)
        await km4.start_kernel()
        hosts = [km.provisioner.host for km in kms]
        assert hosts.count("hosta") == 2 and hosts.count("hostb") == 2, hosts
        assert busiest in hosts
    finally:
        await asyncio.gather(*(km.shutdown_kernel(now=True) for km in kms if km.has_kernel))


async def test_jump_host_and_one_shared_connection(sshspec: Any, store: Any, sshnet: Any) -> None:
    """hostb is reachable only through jump; its kernels share one SSH connection."""
    from orchestrator.tunnels.ssh import pool

    name = sshspec("on-b", ["hostb"])
    kms = [orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store) for _ in range(3)]
    try:
        await asyncio.gather(*(km.start_kernel() for km in kms))
        conns = {id(km.provisioner._conn) for km in kms}
        assert len(conns) == 1
        target = kms[0].provisioner._conn.target
        assert target.jump and target.jump[0].host == sshnet.hosts["jump"].ip
        assert len(sshnet.connection_pids("hostb")) == 1
        results = await asyncio.gather(*(run(km, "print(40 + 2)") for km in kms))
        assert [r["out"] for r in results] == ["42\n"] * 3
        # explicit proxy_jump in the kernelspec instead of the ssh config
        explicit = sshspec(
            "explicit-jump",
            [sshnet.hosts["hostb"].ip],
            user="root",
            proxy_jump=f"root@{sshnet.hosts['jump'].ip}",
            identity_file=str(sshnet.user_key),
            known_hosts=str(sshnet.known_hosts),
            ssh_config=str(sshnet.workdir / "none"),
        )
        Path(sshnet.workdir / "none").write_text("")
        km = orchestrator.AsyncKernelManager(kernel_name=explicit, kernel_store=store)
        kms.append(km)
        await km.start_kernel()
        assert (await run(km, "print('via jump')"))["out"] == "via jump\n"
    finally:
        await asyncio.gather(*(km.shutdown_kernel(now=True) for km in kms if km.has_kernel))
    assert [c for c in pool.connections() if c.target.host == sshnet.hosts["hostb"].ip] == []


@pytest.mark.parametrize("case", ["unknown-host-key", "bad-key", "unreachable"])
async def test_connection_failures_are_clear(
    case: str, sshspec: Any, store: Any, sshnet: Any, tmp_path: Path
) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    a = sshnet.hosts["hosta"]
    config: dict[str, Any] = {
        "user": "root",
        "identity_file": str(sshnet.user_key),
        "known_hosts": str(sshnet.known_hosts),
        "ssh_config": str(empty),
    }
    host = a.ip
    if case == "unknown-host-key":
        config["known_hosts"] = str(empty)
        message = f"host key of {a.ip} is not in {empty}"
    elif case == "bad-key":
        config["identity_file"] = str(sshnet.bad_key)
        message = f"authentication to root@{a.ip} failed"
    else:
        host = sshnet.hosts["hosta"].ip.rsplit(".", 1)[0] + ".99"  # our own subnet, no host
        message = "no host of the pool can be reached"
    name = sshspec(f"fail-{case}", [host], **config)
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    with pytest.raises(OrchestratorError) as info:
        await km.start_kernel()
    assert message in str(info.value)
    assert await store.list() == []


async def test_accept_new_records_the_host_key(
    sshspec: Any, store: Any, sshnet: Any, tmp_path: Path
) -> None:
    known = tmp_path / "kh"
    empty = tmp_path / "empty"
    empty.write_text("")
    a = sshnet.hosts["hosta"]
    name = sshspec(
        "accept-new",
        [a.ip],
        user="root",
        identity_file=str(sshnet.user_key),
        known_hosts=str(known),
        host_key_policy="accept-new",
        ssh_config=str(empty),
    )
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await km.start_kernel()
    try:
        assert a.host_key_pub.split()[1] in known.read_text()
    finally:
        await km.shutdown_kernel(now=True)


async def test_unreachable_host_is_skipped(
    sshspec: Any, store: Any, sshnet: Any, caplog: pytest.LogCaptureFixture
) -> None:
    dead = sshnet.hosts["hosta"].ip.rsplit(".", 1)[0] + ".99"
    name = sshspec("skip", [dead, "hosta"], host_selection="fewest-kernels")
    km = orchestrator.AsyncKernelManager(
        kernel_name=name, kernel_store=store, log=logging.getLogger("ko-test")
    )
    with caplog.at_level("WARNING"):
        await km.start_kernel()
    try:
        assert km.provisioner.host == "hosta"
        assert f"skipping host {dead}" in caplog.text
    finally:
        await km.shutdown_kernel(now=True)


async def test_hostile_environment_values(sshspec: Any, store: Any, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = f"$(touch {marker}); `touch {marker}`; ' \" ; touch {marker} \n"
    name = sshspec("hostile", ["hosta"], working_dir=str(tmp_path))
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await km.start_kernel(env={**os.environ, "KERNEL_WEIRD": hostile, "SECRET_OF_ORCH": "x"})
    try:
        out = (await run(km, "import os, json; print(json.dumps(dict(os.environ)))"))["out"]
        env = json.loads(out)
        assert env["KERNEL_WEIRD"] == hostile
        assert "SECRET_OF_ORCH" not in env and "JUPYTER_RUNTIME_DIR" not in env
        assert not marker.exists()
        key = km.session.key.decode()
        cmdline = Path(f"/proc/{km.provisioner.remote['pid']}/cmdline").read_bytes()
        assert key.encode() not in cmdline
    finally:
        await km.shutdown_kernel(now=True)


async def test_connection_cut_mid_computation(sshspec: Any, store: Any, sshnet: Any) -> None:
    """A 30 s network cut while a cell runs, its output produced during the cut: once the
    link is back the output and the reply arrive, the state is intact, and the kernel
    was never declared dead (status unknown while cut, no restart)."""
    name = sshspec("cut", ["hosta"])
    km = orchestrator.AsyncIOLoopKernelManager(kernel_name=name, kernel_store=store)
    km.restarter_class.time_to_dead = 1.0  # type: ignore[attr-defined]
    await km.start_kernel()
    restarts: list[str] = []
    km.add_restart_callback(lambda: restarts.append("restart"), "restart")
    try:
        assert (await run(km, "kept = 21"))["status"] == "ok"
        kc = km.client()
        kc.start_channels()
        await kc.wait_for_ready(timeout=30)
        msg_id = kc.execute("import time\ntime.sleep(3)\nprint(kept * 2)")
        await asyncio.sleep(1)
        sshnet.cut("hosta")
        cut_at = time.monotonic()
        for _ in range(150):  # the watchdog notices within interval + timeout
            if km.provisioner.tunnel_state == "stalled":
                break
            await asyncio.sleep(0.1)
        assert km.provisioner.tunnel_state == "stalled"
        assert await km.provisioner.poll() is None  # unknown is not dead
        assert await km.is_alive()
        await asyncio.sleep(max(0.0, 30 - (time.monotonic() - cut_at)))
        sshnet.restore("hosta")
        reply = await kc.get_shell_msg(timeout=120)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "ok"
        # printed during the cut, delivered after it
        assert await stream_output(kc, msg_id) == "42\n"
        kc.stop_channels()
        assert km.provisioner.tunnel_state == "up"
        assert (await run(km, "print(kept)"))["out"] == "21\n"
        assert restarts == []
    finally:
        sshnet.restore("hosta")
        km.restarter_class.time_to_dead = 3.0  # type: ignore[attr-defined]
        await km.shutdown_kernel(now=True)


async def test_killed_ssh_sessions_are_rebuilt(sshspec: Any, store: Any, sshnet: Any) -> None:
    name = sshspec("killed", ["hosta"])
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await km.start_kernel()
    try:
        assert (await run(km, "v = 'still here'"))["status"] == "ok"
        assert sshnet.kill_connections("hosta") >= 1
        for _ in range(100):
            if km.provisioner.tunnel_state == "up" and km.provisioner._conn.generation > 1:
                break
            await asyncio.sleep(0.1)
        assert km.provisioner._conn.generation > 1
        assert (await run(km, "print(v)"))["out"] == "still here\n"
    finally:
        await km.shutdown_kernel(now=True)


def ko(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL
    )


def test_orchestrator_restart_reattaches_and_gc(sshspec: Any, store: Any, remote_dir: Path) -> None:
    name = sshspec("cli-ssh", ["hosta"])
    kid = ko("start", name).stdout.strip()
    assert kid, "start failed"
    try:
        pid = json.loads(ko("list", "--json").stdout)[0]["provisioner_info"]["remote"]["pid"]
        assert ko("exec", kid, "x = 7").returncode == 0
        assert ko("exec", kid, "print(x * 6)").stdout == "42\n"  # new process: tunnel rebuilt
        assert (
            json.loads(ko("list", "--json").stdout)[0]["provisioner_info"]["remote"]["pid"] == pid
        )
        # an orphan: a remote kernel whose record was lost
        orphan = ko("start", name).stdout.strip()
        asyncio.run(store.delete(orphan))
        out = ko("gc", "--grace", "0").stdout
        assert f"remote kernel {orphan} on hosta" in out
        assert kernel_processes(orphan) == []
        assert not (remote_dir / orphan).exists()
        assert kernel_processes(kid)  # owned: untouched
    finally:
        ko("shutdown", "--all")
    time.sleep(0.5)
    assert kernel_processes(kid) == [] and list(remote_dir.iterdir()) == []


def test_kernelspec_install_ssh(jupyter_env: dict[str, str], sshnet: Any) -> None:
    result = ko(
        "kernelspec",
        "install",
        "ssh-provisioner",
        "--name",
        "hpc",
        "--host",
        "hosta",
        "--host",
        "root@10.0.0.1:2222",
        "--user",
        "alice",
        "--port",
        "22",
        "--identity-file",
        "/k",
        "--known-hosts",
        "/kh",
        "--proxy-jump",
        "root@jump:22",
        "--python",
        "/opt/py/bin/python3",
    )
    assert result.returncode == 0, result.stderr
    spec = json.loads((Path(result.stdout.strip()) / "kernel.json").read_text())
    assert spec["argv"][0] == "/opt/py/bin/python3"
    assert spec["metadata"]["kernel_provisioner"]["config"] == {
        "hosts": ["hosta", "root@10.0.0.1:2222"],
        "python": "/opt/py/bin/python3",
        "user": "alice",
        "port": "22",
        "identity_file": "/k",
        "known_hosts": "/kh",
        "proxy_jump": "root@jump:22",
    }
    bad = ko("kernelspec", "install", "ssh-provisioner", "--name", "x", "--host", "a b@c")
    assert bad.returncode == 1 and "bad SSH destination 'a b@c'" in bad.stderr


def _listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_one_agent_answers_polls_and_nothing_is_held_after_release(
    sshspec: Any, store: Any
) -> None:
    """Polls start no remote process (one agent session, batched statuses); the agent
    comes back by itself if killed; detach(), a status check and a failed re-attach
    leave no connection, listener or tunnel behind in this process."""
    from orchestrator.cli.commands import kernel_status
    from orchestrator.errors import ReattachError
    from orchestrator.tunnels.ssh import pool
    from provisioners.ssh.agent import agent_for

    name = sshspec("agent", ["hosta"])
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await km.start_kernel()
    conn = km.provisioner._conn
    agent = agent_for(conn, km.provisioner.python)
    sessions = conn.sessions_opened
    for _ in range(20):
        agent.invalidate()
        assert await km.provisioner.poll() is None
    assert conn.sessions_opened == sessions and agent.starts == 1
    os.kill(agent.remote_pid, 9)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        agent.invalidate()
        if await km.provisioner.poll() is None and agent.starts == 2:
            break
        await asyncio.sleep(0.2)
    assert agent.starts == 2 and await km.provisioner.poll() is None
    assert (await run(km, "print('agent back')"))["out"] == "agent back\n"

    kernel_id, ports = km.kernel_id, dict(km.provisioner.local_ports)
    record = await store.get(kernel_id)
    km.detach()
    assert pool.connections() == [] and not any(_listening(p) for p in ports.values())
    assert (await store.get(kernel_id)).owner == {}  # released at once
    assert await kernel_status(store, record) == "running"  # asked without a tunnel
    assert pool.connections() == [] and not any(_listening(p) for p in ports.values())
    with pytest.raises(ReattachError):
        await orchestrator.attach(kernel_id, store=store, timeout=0.000001)
    assert pool.connections() == [] and not any(_listening(p) for p in ports.values())
    km2 = await orchestrator.attach(kernel_id, store=store)
    assert km2.provisioner.local_ports == ports  # the same local ports again
    await km2.shutdown_kernel()
    assert pool.connections() == []


def test_forget_a_kernel_whose_host_is_gone(sshspec: Any, store: Any, sshnet: Any) -> None:
    """The host is unreachable for good: a plain shutdown fails with a clear error and
    keeps the record; shutdown --force removes it after a bounded cleanup attempt and
    says what may be left; when the host returns, gc removes that leftover."""
    name = sshspec("gone", ["hosta"], connect_timeout=2)
    kid = ko("start", name).stdout.strip()
    assert kid
    pid = json.loads(ko("list", "--json").stdout)[0]["provisioner_info"]["remote"]["pid"]
    sshnet.cut("hosta")
    try:
        plain = ko("shutdown", kid)
        assert plain.returncode == 1 and "Traceback" not in plain.stderr, plain.stderr
        assert asyncio.run(store.get(kid)) is not None
        forced = ko("forget", kid, "--cleanup-timeout", "5")
        assert forced.returncode == 0, forced.stderr
        assert f"removed the record of {kid}; could not clean up" in forced.stderr
        assert f"may be left behind: process {pid} and directory" in forced.stderr
        assert "on host hosta" in forced.stderr
        assert asyncio.run(store.get(kid)) is None
    finally:
        sshnet.restore("hosta")
    assert kernel_processes(kid)  # really left behind, as said
    out = ko("gc", "--grace", "0").stdout
    assert f"remote kernel {kid} on hosta" in out
    deadline = time.monotonic() + 10
    while kernel_processes(kid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert kernel_processes(kid) == []


CROSS_USER_SPY = """
import json, os, pwd, zmq
seen = {{"me": pwd.getpwuid(os.getuid()).pw_name}}
for what, path in (("file", {conn!r}), ("dir", {kdir!r})):
    try:
        open(path).read(1) if what == "file" else os.listdir(path)
        seen[what] = "READ"
    except OSError as e:
        seen[what] = type(e).__name__
spy = zmq.Context().socket(zmq.SUB)
spy.setsockopt(zmq.SUBSCRIBE, b"")
spy.connect("tcp://{host}:{iopub}")
print(json.dumps(seen))
"""


@pytest.fixture
def per_user_spec(sshspec: Any, sshnet: Any, kernel_accounts: tuple[str, ...]) -> str:
    """Each gateway user logs in to hosta as ko-<user>, with a key of their own."""
    for account in kernel_accounts:
        sshnet.authorize_account(account)
    return str(
        sshspec(
            "per-user",
            ["hosta"],
            user="ko-{username}",
            identity_file=str(sshnet.workdir / "id_ko-{username}"),
            remote_dir="~/.kernel-orchestrator/kernels",
        )
    )


async def test_each_user_runs_in_an_account_of_their_own(
    per_user_spec: str, sshspec: Any, store: Any
) -> None:
    """Alice's remote kernel reads neither Bob's connection file nor his directory, and
    hears nothing on his remote IOPub port: it is CurveZMQ-encrypted."""

    def manager(name: str) -> Any:
        return orchestrator.AsyncKernelManager(
            kernel_name=name, kernel_store=store, multi_tenant=True
        )

    alice, bob = manager(per_user_spec), manager(per_user_spec)
    await alice.start_kernel(env={**os.environ, "KERNEL_USERNAME": "alice"})
    await bob.start_kernel(env={**os.environ, "KERNEL_USERNAME": "bob"})
    try:
        assert (alice.provisioner.account.user, bob.provisioner.account.user) == (
            "ko-alice",
            "ko-bob",
        )
        assert alice.get_connection_info().get("curve_secretkey")
        theirs = bob.provisioner.remote
        assert theirs["dir"].startswith("/home/ko-bob/")
        code = CROSS_USER_SPY.format(
            conn=theirs["connection_file"],
            kdir=theirs["dir"],
            host="127.0.0.1",
            iopub=theirs["ports"]["iopub"],
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
    assert kernel_processes(alice.kernel_id) == [] and kernel_processes(bob.kernel_id) == []

    # A kernelspec that maps nobody is refused for a multi-user gateway, before any login.
    shared = sshspec("shared-account", ["hosta"])
    with pytest.raises(OrchestratorError, match="would share one remote account"):
        await manager(shared).start_kernel(env={**os.environ, "KERNEL_USERNAME": "alice"})
    assert await store.list() == []


async def test_loopback_private_forwards_are_encrypted_where_the_loopback_is_shared(
    sshspec: Any, store: Any
) -> None:
    """loopback_private leaves the remote loopback plain, but the forwards listen on
    this machine's loopback: shared with other users' host kernels, they carry Curve."""
    name = sshspec("lo-private", ["hosta"], loopback_private=True)
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await km.start_kernel()
    try:
        assert not km.curve_secretkey
    finally:
        await km.shutdown_kernel(now=True)
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store, shared_loopback=True)
    await km.start_kernel()
    try:
        assert km.curve_secretkey and km.get_connection_info().get("curve_publickey")
        assert (await run(km, "print('sealed')"))["out"] == "sealed\n"
    finally:
        await km.shutdown_kernel(now=True)


async def test_a_kernel_without_curve_on_a_shared_host_is_refused(
    sshspec: Any, store: Any, legacy_kernel_python: str, remote_dir: Path
) -> None:
    """Other accounts on the host can subscribe to the kernel's remote IOPub port: under
    the default policy a kernel that ignores its Curve keys (ipykernel 6) is refused,
    saying what to upgrade and what to set, and nothing is left on the host."""
    name = sshspec("legacy", ["hosta"], python=legacy_kernel_python)
    km = orchestrator.AsyncKernelManager(kernel_name=name, kernel_store=store)
    await start_is_refused_for_plain_text(km, legacy_kernel_python)
    assert kernel_processes(km.kernel_id) == []
    assert not (remote_dir / km.kernel_id).exists()
    assert await store.list() == []


@pytest.fixture
def certificate_spec(sshspec: Any, sshnet: Any, kernel_accounts: tuple[str, ...]) -> str:
    """Each gateway user logs in to hosta as ko-<user> with a certificate the gateway
    mints from the net's CA (which the hosts trust): no per-user key anywhere."""
    return str(
        sshspec(
            "certificates",
            ["hosta"],
            user="ko-{username}",
            certificate_authority=str(sshnet.user_ca),
            certificate_validity=120,
            remote_dir="~/.kernel-orchestrator/kernels",
        )
    )


def secret_lines(path: Path) -> list[str]:
    """The base64 lines of a private key file: what must never leak."""
    return [line for line in path.read_text().splitlines() if line and "PRIVATE KEY" not in line]


async def test_certificate_mode_needs_no_stored_key(
    certificate_spec: str, store: Any, sshnet: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Alice's and Bob's kernels run as their own accounts, each logged in with a
    certificate minted for that account (sshd's log names it); the CA key reaches no
    kernel's environment or argv and no log line."""
    from orchestrator.users import reinstate, revoke

    caplog.set_level(logging.DEBUG)
    sshd_log = sshnet.hosts["hosta"].sshd_log
    seen_before = len(sshd_log.read_text(errors="replace"))

    def manager() -> Any:
        return orchestrator.AsyncKernelManager(
            kernel_name=certificate_spec, kernel_store=store, multi_tenant=True
        )

    alice, bob = manager(), manager()
    await alice.start_kernel(env={**os.environ, "KERNEL_USERNAME": "alice"})
    await bob.start_kernel(env={**os.environ, "KERNEL_USERNAME": "bob"})
    try:
        assert (await run(alice, "import getpass; print(getpass.getuser())"))["out"] == (
            "ko-alice\n"
        )
        assert (await run(bob, "import getpass; print(getpass.getuser())"))["out"] == "ko-bob\n"
        logins = sshd_log.read_text(errors="replace")[seen_before:]
        for user in ("alice", "bob"):
            assert re.search(
                rf"Accepted publickey for ko-{user} .*ED25519-CERT .*ID kernel-orchestrator:"
                rf"{user}:ko-{user} ",
                logins,
            ), logins[-3000:]
        secret = secret_lines(sshnet.user_ca)
        for km in (alice, bob):
            for pid in kernel_processes(km.kernel_id):
                exposed = " ".join(procinfo.environ(pid).values())
                exposed += Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
                assert not any(line in exposed for line in secret)
        assert not any(line in caplog.text for line in secret)
    finally:
        await asyncio.gather(alice.shutdown_kernel(now=True), bob.shutdown_kernel(now=True))

    # A user the gateway no longer has gets no certificate: a clear refusal, no login.
    revoke("alice")
    try:
        with pytest.raises(OrchestratorError, match="'alice' is no longer a user"):
            await manager().start_kernel(env={**os.environ, "KERNEL_USERNAME": "alice"})
    finally:
        reinstate("alice")
    assert await store.list() == []


def test_certificates_that_sshd_must_refuse(sshnet: Any, kernel_accounts: tuple[str, ...]) -> None:
    """An expired certificate, and one for another account, open nothing."""
    import paramiko

    from orchestrator.tunnels.ssh import CertificateAuthority, CertificateRequest

    ca = CertificateAuthority.load(str(sshnet.user_ca))
    host = sshnet.hosts["hosta"]

    def login(account: str, request: CertificateRequest, now: float | None = None) -> None:
        key, _ = ca.mint(request, now=now)
        client = paramiko.SSHClient()
        client.load_host_keys(str(sshnet.known_hosts))
        try:
            client.connect(
                host.ip,
                username=account,
                pkey=key,
                look_for_keys=False,
                allow_agent=False,
                timeout=10,
            )
        finally:
            client.close()

    alice = CertificateRequest(str(sshnet.user_ca), "ko-alice", "alice", validity=60)
    login("ko-alice", alice)  # (the same certificate, fresh, is accepted)
    with pytest.raises(paramiko.AuthenticationException):
        login("ko-alice", alice, now=time.time() - 3600)  # expired an hour ago
    with pytest.raises(paramiko.AuthenticationException):
        login("ko-bob", alice)  # alice's principal only
    # Bound to the gateway's addresses: good from here, worthless from anywhere else.
    here = CertificateRequest(
        str(sshnet.user_ca), "ko-alice", "alice", source_addresses=(sshnet.subnet,)
    )
    login("ko-alice", here)
    elsewhere = CertificateRequest(
        str(sshnet.user_ca), "ko-alice", "alice", source_addresses=("192.0.2.0/24",)
    )
    with pytest.raises(paramiko.AuthenticationException):
        login("ko-alice", elsewhere)


def test_an_unsafe_certificate_authority_is_refused(tmp_path: Path, sshnet: Any) -> None:
    from orchestrator.tunnels.ssh import CertificateAuthority, CertificateError

    readable = tmp_path / "ca"
    readable.write_bytes(sshnet.user_ca.read_bytes())
    readable.chmod(0o604)  # other accounts could read it
    with pytest.raises(CertificateError, match=r"certificate_authority .* \(chmod 600\)"):
        CertificateAuthority.load(str(readable))
    with pytest.raises(CertificateError, match="is not a regular file"):
        CertificateAuthority.load(str(tmp_path))
    with pytest.raises(CertificateError, match="must be an absolute path"):
        CertificateAuthority.load("user_ca")
    # An operator's link (a mounted Secret's files are links) leads to the key itself.
    link = tmp_path / "link"
    link.symlink_to(sshnet.user_ca)
    assert CertificateAuthority.load(str(link)).public_line.startswith("ssh-ed25519 ")


READ_AND_WRITE_BACK = """
import os
rows = open("data.csv").read().splitlines()
open("result.txt", "w").write(f"{len(rows) - 1} rows\\n")
print(os.getcwd())
"""


PEEK = """
import os
try:
    os.listdir({path!r})
except PermissionError:
    print("refused")
"""


async def test_the_kernel_starts_in_the_notebooks_directory(
    sshspec: Any, sshnet: Any, store: Any, kernel_accounts: tuple[str, ...]
) -> None:
    """The notebook's directory on the server (KERNEL_WORKING_DIR) is mapped to where the
    hosts mount the same storage: the kernel reads the file beside the notebook and
    writes one back that the server sees. Alice's kernel cannot reach Bob's home, and a
    directory outside the map, with '..', behind a link or missing, is refused."""
    from .homes import user_homes

    with user_homes({"alice": "ko-alice", "bob": "ko-bob"}) as homes:
        name = sshspec(
            "notebook-dir",
            ["hosta"],
            user="ko-{username}",
            certificate_authority=str(sshnet.user_ca),
            remote_dir="~/.kernel-orchestrator/kernels",
            working_dir_map=homes.working_dir_map(),
        )

        def start(user: str, directory: str) -> Any:
            km = orchestrator.AsyncKernelManager(
                kernel_name=name, kernel_store=store, multi_tenant=True
            )
            env = {**os.environ, "KERNEL_USERNAME": user, "KERNEL_WORKING_DIR": directory}
            return km, km.start_kernel(env=env)

        alice, starting = start("alice", str(homes.server_dir("alice", "sub")))
        await starting
        try:
            done = await run(alice, READ_AND_WRITE_BACK)
            assert done["out"] == f"{os.path.realpath(homes.kernel_dir('alice', 'sub'))}\n", done
            assert homes.server_dir("alice", "sub", "result.txt").read_text() == "2 rows\n"
            peek = await run(alice, PEEK.format(path=str(homes.kernel_dir("bob"))))
            assert peek["out"] == "refused\n"
            # A restart starts the kernel in the same directory, by this process or by
            # another that took the kernel over.
            await alice.restart_kernel()
            assert (await run(alice, "import os; print(os.getcwd())"))["out"] == done["out"]
            alice.detach()
            alice = await orchestrator.attach(alice.kernel_id, store=store)
            await alice.restart_kernel()
            assert (await run(alice, "import os; print(os.getcwd())"))["out"] == done["out"]
        finally:
            await alice.shutdown_kernel(now=True)

        link = homes.server_dir("alice", "link")
        link.symlink_to(homes.kernel_dir("bob"))
        os.lchown(link, *_ids("ko-alice"))
        refusals = {
            str(homes.server_dir("bob", "sub")): "under none of the directories",
            f"{homes.server_dir('alice')}/../bob": "without '..'",
            str(link / "sub"): "is a symbolic link",
            str(homes.server_dir("alice", "nowhere")): "No such file or directory",
        }
        for directory, why in refusals.items():
            km, starting = start("alice", directory)
            with pytest.raises(OrchestratorError, match=why):
                await starting
            assert not km.has_kernel
        assert await store.list() == []


def _ids(account: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(account)
    return entry.pw_uid, entry.pw_gid
