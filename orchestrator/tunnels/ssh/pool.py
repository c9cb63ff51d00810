"""Sharing SSH connections between kernels, and the tunneler the provisioners use.

Connections are reference-counted per :attr:`SSHTarget.pool_key`: the first kernel
on a host opens the connection, the last one to leave closes it. Opening one is
blocking (paramiko), so the async API runs it in a thread.
"""

from __future__ import annotations

import threading

from ...executors import run_blocking
from ...forks import reset_in_child
from .connection import SSHConnection
from .forward import PortForward, acceptor
from .target import SSHTarget, resolve_target

CHANNELS = ("shell", "iopub", "stdin", "control", "hb")


class ConnectionPool:
    """Process-wide: one live :class:`SSHConnection` per target, reference-counted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[object, ...], list[object]] = {}  # key -> [conn, refs, lock]

    def acquire(self, target: SSHTarget) -> SSHConnection:
        """The shared connection to ``target`` (connecting if needed); pair with release()."""
        key = target.pool_key
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = [SSHConnection(target), 0, threading.Lock()]
            entry[1] = int(entry[1]) + 1  # type: ignore[call-overload]
        conn, _, connect_lock = entry
        assert isinstance(conn, SSHConnection) and isinstance(connect_lock, type(self._lock))
        try:
            with connect_lock:
                if conn.generation == 0 and conn.state != "closed":
                    conn.connect()
        except BaseException:
            self.release(target)
            raise
        return conn

    def release(self, target: SSHTarget) -> None:
        key = target.pool_key
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            entry[1] = int(entry[1]) - 1  # type: ignore[call-overload]
            if int(entry[1]) > 0:  # type: ignore[call-overload]
                return
            del self._entries[key]
        conn = entry[0]
        assert isinstance(conn, SSHConnection)
        conn.close()

    def connections(self) -> list[SSHConnection]:
        with self._lock:
            return [e[0] for e in self._entries.values()]  # type: ignore[misc]


pool = ConnectionPool()


class KernelTunnel:
    """The five forwards of one kernel, on a shared connection."""

    def __init__(self, target: SSHTarget) -> None:
        self.target = target
        self.conn: SSHConnection | None = None
        self.forwards: dict[str, PortForward] = {}

    def open(
        self,
        remote_ports: dict[str, int],
        local_ports: dict[str, int] | None = None,
        remote_host: str = "127.0.0.1",
    ) -> dict[str, int]:
        self.conn = pool.acquire(self.target)
        try:
            for channel, remote_port in remote_ports.items():
                wanted = (local_ports or {}).get(channel, 0)
                try:
                    fwd = PortForward(self.conn, remote_host, remote_port, wanted)
                except Exception:
                    if not wanted:
                        raise
                    fwd = PortForward(self.conn, remote_host, remote_port, 0)
                self.forwards[channel] = fwd
                acceptor().add(fwd)
        except BaseException:
            self.close()
            raise
        return {ch: f.local_port for ch, f in self.forwards.items()}

    @property
    def state(self) -> str:
        return self.conn.state if self.conn is not None else "closed"

    def close(self) -> None:
        for fwd in self.forwards.values():
            acceptor().remove(fwd)
            fwd.close()
        self.forwards.clear()
        if self.conn is not None:
            self.conn = None
            pool.release(self.target)


class SSHTunneler:
    """:class:`orchestrator.tunnels.PortTunneler` over the shared SSH connections."""

    def __init__(self, target: SSHTarget) -> None:
        self.target = target
        self._tunnels: dict[str, KernelTunnel] = {}

    async def open(
        self,
        kernel_id: str,
        remote_ports: dict[str, int],
        local_ports: dict[str, int] | None = None,
    ) -> dict[str, int]:
        await self.close(kernel_id)
        tunnel = KernelTunnel(self.target)
        ports = await run_blocking("ssh", tunnel.open, remote_ports, local_ports)
        self._tunnels[kernel_id] = tunnel
        return ports

    async def close(self, kernel_id: str) -> None:
        tunnel = self._tunnels.pop(kernel_id, None)
        if tunnel is not None:
            await run_blocking("ssh", tunnel.close)

    def close_now(self, kernel_id: str) -> None:
        tunnel = self._tunnels.pop(kernel_id, None)
        if tunnel is not None:
            tunnel.close()


_tunnelers: dict[tuple[object, ...], SSHTunneler] = {}


def tunneler_for(destination: str) -> SSHTunneler:
    target = resolve_target(destination)
    return _tunnelers.setdefault(target.pool_key, SSHTunneler(target))


@reset_in_child
def _reset_after_fork() -> None:
    """The parent's SSH connections and their threads are not the child's."""
    global _tunnelers
    pool.__init__()  # type: ignore[misc]  # in place: provisioners import ``pool``
    _tunnelers = {}
