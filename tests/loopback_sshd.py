"""Test infrastructure: an sshd on this host's loopback, for "remote" Docker engines.

A Docker engine reached as ``DOCKER_HOST=ssh://...`` publishes kernel ports on *its
host's* loopback; with an sshd in the root namespace that host is this one, so the
whole remote-engine path (the docker SDK over SSH, ports tunnelled back by our SSH
layer) runs for real while all traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .sshnet import ensure_packages


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoopbackSSHD:
    """sshd on 127.0.0.1:<port> with a generated host key and user key, and a HOME whose
    ``.ssh/config`` names it ``dockerhost``."""

    def __init__(self) -> None:
        ensure_packages()
        self.workdir = Path(tempfile.mkdtemp(prefix="ko-lo-sshd-"))
        self.home = self.workdir / "home"
        ssh = self.home / ".ssh"
        ssh.mkdir(parents=True, mode=0o700)
        self.port = _free_port()
        host_key, user_key = self.workdir / "host_key", ssh / "id_ed25519"
        for key in (host_key, user_key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
            )
        (self.workdir / "authorized_keys").write_text((ssh / "id_ed25519.pub").read_text())
        config = self.workdir / "sshd_config"
        config.write_text(
            f"ListenAddress 127.0.0.1\nPort {self.port}\nHostKey {host_key}\n"
            f"AuthorizedKeysFile {self.workdir}/authorized_keys\n"
            "PermitRootLogin prohibit-password\nPasswordAuthentication no\nStrictModes no\n"
            "UsePAM no\nAllowTcpForwarding yes\nMaxSessions 100\nMaxStartups 100:30:200\n"
            f"PidFile {self.workdir}/sshd.pid\n"
        )
        Path("/run/sshd").mkdir(exist_ok=True)
        pub = (self.workdir / "host_key.pub").read_text().split()
        (ssh / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {pub[0]} {pub[1]}\n")
        (ssh / "config").write_text(
            f"Host dockerhost\n  HostName 127.0.0.1\n  Port {self.port}\n  User root\n"
            f"  IdentityFile {user_key}\n"
        )
        self.proc = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)],
            stderr=open(self.workdir / "sshd.log", "w"),  # noqa: SIM115
            start_new_session=True,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(4).startswith(b"SSH"):
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("loopback sshd did not start")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)  # the listener and its session children
            self.proc.wait(10)
        subprocess.run(["rm", "-rf", str(self.workdir)], check=False)
