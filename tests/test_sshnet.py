"""The SSH test network (tests/sshnet.py) itself: real sshd in network namespaces."""

from __future__ import annotations

import secrets
import shlex
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from .sshnet import SSHNet, sshnet_fixture

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def net() -> Iterator[SSHNet]:
    instance = None
    for instance in sshnet_fixture():
        yield instance
    assert instance is not None
    assert instance.leftovers() == []


def ssh(net: SSHNet, name: str, *cmd: str, opts: tuple[str, ...] = (), timeout: float = 30):
    return subprocess.run(
        ["ssh", "-F", str(net.ssh_config), *opts, name, *cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def paramiko_client(net: SSHNet, key: Path | None = None) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(net.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return client


def connect_kwargs(net: SSHNet, key: Path | None = None) -> dict:
    return {
        "username": "root",
        "key_filename": str(key or net.user_key),
        "look_for_keys": False,
        "allow_agent": False,
        "timeout": 10,
        "banner_timeout": 10,
        "auth_timeout": 10,
    }


def run_remote(client: paramiko.SSHClient, cmd: str, timeout: float = 20) -> str:
    _, stdout, _ = client.exec_command(cmd, timeout=timeout)
    out = stdout.read().decode()
    assert stdout.channel.recv_exit_status() == 0
    return out


def test_openssh_reaches_each_host(net: SSHNet) -> None:
    for name in ("hosta", "jump", "hostb"):  # hostb through ProxyJump jump
        r = ssh(net, name, "ip", "-o", "-4", "addr", "show")
        assert r.returncode == 0, (name, r.stderr)
        assert f" {net.hosts[name].ip}/" in r.stdout, (name, r.stdout)
    assert ssh(net, "hosta", "true").returncode == 0
    assert ssh(net, "hostb", "true").returncode == 0


def test_addresses_and_namespaces(net: SSHNet) -> None:
    ips = {name: h.ip for name, h in net.hosts.items()}
    third = net.subnet.split(".")[2]
    assert ips == {
        "hosta": f"10.213.{third}.2",
        "jump": f"10.213.{third}.6",
        "hostb": f"10.213.{third}.10",
    }
    assert len({h.ns for h in net.hosts.values()}) == 3
    assert all(h.ns.startswith("ko-") for h in net.hosts.values())
    # ip_forward is off everywhere in our namespaces.
    for name in net.hosts:
        assert net.run(name, "cat /proc/sys/net/ipv4/ip_forward").stdout.strip() == "0"
    # known_hosts holds the three host keys under the IPs.
    lines = net.known_hosts.read_text().splitlines()
    assert sorted(lines) == sorted(f"{h.ip} {h.host_key_pub}" for h in net.hosts.values())


def test_bad_key_refused(net: SSHNet) -> None:
    ip = net.hosts["hosta"].ip
    r = subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", str(net.bad_key), "-o", "IdentitiesOnly=yes",
         "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={net.known_hosts}",
         "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10", f"root@{ip}", "true"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert r.returncode == 255
    assert "Permission denied" in r.stderr
    client = paramiko_client(net)
    with pytest.raises(paramiko.AuthenticationException):
        client.connect(ip, **connect_kwargs(net, net.bad_key))
    client.close()


def test_unknown_host_key_rejected(net: SSHNet, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    for name in ("hosta", "hostb"):
        r = ssh(net, name, "true", opts=("-o", f"UserKnownHostsFile={empty}"))
        assert r.returncode == 255, name
        assert "Host key verification failed" in r.stderr, (name, r.stderr)
    assert empty.read_text() == ""
    # A known_hosts with another host's key under hosta's IP: rejected too.
    wrong = tmp_path / "known_hosts.wrong"
    wrong.write_text(f"{net.hosts['hosta'].ip} {net.hosts['jump'].host_key_pub}\n")
    r = ssh(net, "hosta", "true", opts=("-o", f"UserKnownHostsFile={wrong}"))
    assert r.returncode == 255
    assert "HOST IDENTIFICATION HAS CHANGED" in r.stderr
    client = paramiko.SSHClient()  # nothing loaded, RejectPolicy
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        client.connect(net.hosts["hosta"].ip, **connect_kwargs(net))
    client.close()


def test_hostb_loopback_is_separate(net: SSHNet) -> None:
    token = secrets.token_hex(8)
    server = (
        "import socket,sys\n"
        "s=socket.socket();s.bind(('127.0.0.1',0));s.listen(8)\n"
        "print(s.getsockname()[1],flush=True)\n"
        "while True:\n"
        "  c,_=s.accept();c.sendall(sys.argv[1].encode());c.close()\n"
    )
    hostb = net.hosts["hostb"]
    proc = subprocess.Popen(
        ["ip", "netns", "exec", hostb.ns, "python3", "-c", server, token],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        port = int(proc.stdout.readline())  # type: ignore[union-attr]
        probe = (
            "import socket,sys\n"
            "try:\n"
            "  c=socket.create_connection(('127.0.0.1',int(sys.argv[1])),timeout=2)\n"
            "  print(c.recv(64).decode())\n"
            "except OSError as e: print('refused', e)\n"
        )
        inside = net.run("hostb", ["python3", "-c", probe, str(port)])
        assert inside.stdout.strip() == token
        via_ssh = ssh(net, "hostb", "python3", "-c", shlex.quote(probe), str(port))
        assert via_ssh.stdout.strip() == token, via_ssh.stderr
        for other in ("hosta", "jump"):
            assert token not in net.run(other, ["python3", "-c", probe, str(port)]).stdout
        here = subprocess.run(["python3", "-c", probe, str(port)], capture_output=True,
                              text=True, timeout=10)  # fmt: skip
        assert token not in here.stdout
        # Only lo and its veth in hostb.
        links = net.run("hostb", "ip -o link show").stdout.splitlines()
        assert len(links) == 2 and links[0].split(":")[1].strip() == "lo"
    finally:
        proc.kill()
        proc.wait()


def test_hostb_unreachable_from_root_ns(net: SSHNet) -> None:
    t0 = time.monotonic()
    with pytest.raises(OSError):
        socket.create_connection((net.hosts["hostb"].ip, 22), timeout=1).close()
    assert time.monotonic() - t0 < 2
    # ...but reachable from jump.
    probe = "import socket,sys;socket.create_connection((sys.argv[1],22),timeout=2).close()"
    assert net.run("jump", ["python3", "-c", probe, net.hosts["hostb"].ip]).returncode == 0


@pytest.mark.parametrize("name", ["hosta", "hostb", "jump"])
def test_cut_and_restore(net: SSHNet, name: str) -> None:
    opts = ("-o", "ConnectTimeout=2")
    assert ssh(net, name, "true", opts=opts).returncode == 0
    net.cut(name)
    try:
        t0 = time.monotonic()
        r = ssh(net, name, "true", opts=opts, timeout=20)
        assert r.returncode == 255, r
        assert time.monotonic() - t0 < 10
        if name == "jump":  # hostb goes through jump
            assert ssh(net, "hostb", "true", opts=opts, timeout=20).returncode == 255
    finally:
        net.restore(name)
    r = ssh(net, name, "true", opts=opts)
    assert r.returncode == 0, r.stderr
    if name == "jump":
        assert ssh(net, "hostb", "true", opts=opts).returncode == 0


def test_cut_stalls_established_connection_until_restore(net: SSHNet) -> None:
    client = paramiko_client(net)
    client.connect(net.hosts["hosta"].ip, **connect_kwargs(net))
    try:
        assert run_remote(client, "echo before") == "before\n"
        result: list[str] = []
        net.cut("hosta")
        try:
            worker = threading.Thread(
                target=lambda: result.append(run_remote(client, "echo after", timeout=60)),
                daemon=True,
            )
            worker.start()
            worker.join(2.0)
            assert worker.is_alive() and not result  # no answer during the outage
            assert client.get_transport().is_active()  # type: ignore[union-attr]
        finally:
            net.restore("hosta")
        worker.join(30)
        assert result == ["after\n"]  # the same TCP connection carried on
    finally:
        client.close()


def test_paramiko_hosta(net: SSHNet) -> None:
    client = paramiko_client(net)
    client.connect(net.hosts["hosta"].ip, **connect_kwargs(net))
    try:
        assert run_remote(client, "echo hi") == "hi\n"
        key = client.get_transport().get_remote_server_key()  # type: ignore[union-attr]
        assert (
            f"{key.get_name()} {key.get_base64()}"
            == net.hosts["hosta"].host_key_pub.rsplit(" ", 1)[0]
        )
    finally:
        client.close()


def test_paramiko_hostb_through_jump(net: SSHNet) -> None:
    hostb = net.hosts["hostb"]
    jump = paramiko_client(net)
    jump.connect(net.hosts["jump"].ip, **connect_kwargs(net))
    try:
        channel = jump.get_transport().open_channel(  # type: ignore[union-attr]
            "direct-tcpip", (hostb.ip, 22), ("127.0.0.1", 0), timeout=10
        )
        inner = paramiko_client(net)
        inner.connect(hostb.ip, sock=channel, **connect_kwargs(net))
        try:
            assert run_remote(inner, "echo hi") == "hi\n"
            assert f" {hostb.ip}/" in run_remote(inner, "ip -o -4 addr show")
        finally:
            inner.close()
    finally:
        jump.close()


def test_kill_connections(net: SSHNet) -> None:
    client = paramiko_client(net)
    client.connect(net.hosts["hosta"].ip, **connect_kwargs(net))
    try:
        assert run_remote(client, "echo hi") == "hi\n"
        assert net.connection_pids("hosta")
        listener = net.hosts["hosta"].sshd_pid
        assert net.kill_connections("hosta") >= 1
        transport = client.get_transport()
        deadline = time.monotonic() + 10
        while transport.is_active() and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.05)
        assert not transport.is_active()  # type: ignore[union-attr]
        assert net.connection_pids("hosta") == []
        assert Path(f"/proc/{listener}").exists()  # the listener lives on
    finally:
        client.close()
    assert ssh(net, "hosta", "true").returncode == 0  # new connections work


def test_second_instance_coexists_and_stop_leaves_nothing(net: SSHNet) -> None:
    other = SSHNet()
    with other:
        assert other.subnet != net.subnet
        assert {h.ns for h in other.hosts.values()}.isdisjoint(h.ns for h in net.hosts.values())
        assert ssh(other, "hostb", "true").returncode == 0
        # Something started over SSH, detached from the session, lives in the namespace.
        r = ssh(other, "hosta", "setsid -f sleep 600 >/dev/null 2>&1 < /dev/null; echo ok")
        assert r.stdout.strip() == "ok", r.stderr
        assert any(
            Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\x00600")
            for pid in map(int, net_pids(other.hosts["hosta"].ns))
        )
        workdir = other.workdir
    assert other.leftovers() == []
    assert not workdir.exists()
    assert not [n for n in netns_names() if n.startswith(f"ko-{other.suffix}-")]
    other.stop()  # idempotent
    # The first instance was not disturbed.
    assert ssh(net, "hostb", "true").returncode == 0


def net_pids(ns: str) -> list[str]:
    return subprocess.run(
        ["ip", "netns", "pids", ns], capture_output=True, text=True, check=True
    ).stdout.split()


def netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]
