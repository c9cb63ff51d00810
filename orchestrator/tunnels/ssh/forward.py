"""Local listening ports forwarded through ``direct-tcpip`` channels of a shared connection.

jupyter_client's forwarder copies 1 KiB at a time through ``select``; here each
forwarded TCP connection is pumped by the shared listener code
(:mod:`orchestrator.tunnels.listener`) over channels with a 16 MiB window, which is
what lets a paramiko tunnel come close to OpenSSH's ``-L``. The listeners survive
reconnects of the SSH connection, so clients keep their connection info.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..listener import Link, LocalForward, acceptor
from .connection import SSHConnection

log = logging.getLogger("kernel-orchestrator.ssh")

__all__ = ["Link", "PortForward", "acceptor"]


class PortForward(LocalForward):
    """``127.0.0.1:local_port`` -> ``remote_host:remote_port`` on the SSH target."""

    def __init__(
        self,
        conn: SSHConnection,
        remote_host: str,
        remote_port: int,
        local_port: int = 0,
        bind: str = "127.0.0.1",
    ) -> None:
        self.conn = conn
        self.remote_host, self.remote_port = remote_host, remote_port
        super().__init__(local_port, bind=bind)

    def open_remote(self) -> tuple[Any, Callable[[], None]] | None:
        try:
            channel = self.conn.open_direct(self.remote_host, self.remote_port, timeout=30)
        except Exception as e:
            log.debug(
                "forward %s -> %s:%s: %s", self.local_port, self.remote_host, self.remote_port, e
            )
            return None
        return channel, lambda: None
