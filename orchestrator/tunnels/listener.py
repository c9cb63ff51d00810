"""Loopback listeners joined to remote streams: what every tunnel shares.

A kernel's clients connect to local loopback ports; each accepted connection is
joined to a stream that reaches the kernel (an SSH ``direct-tcpip`` channel, a
Kubernetes port-forward) and pumped both ways by two threads moving up to 256 KiB per
call. One acceptor thread serves every listener of the process. A listener is created
once (port 0: the kernel picks a free port atomically, no bind-then-close race) and
outlives reconnects of whatever carries its streams, so clients keep their ports.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
from collections.abc import Callable
from typing import Any

from ..errors import OrchestratorError
from ..forks import reset_in_child

log = logging.getLogger("kernel-orchestrator.tunnels")
CHUNK = 256 * 1024


def _pump(src: Any, dst: Any, on_done: Any) -> None:
    """Copy ``src`` to ``dst`` until EOF or error, then half-close ``dst``."""
    try:
        while True:
            data = src.recv(CHUNK)
            if not data:
                break
            dst.sendall(data)
    except Exception:  # a reset on either side ends this direction
        pass
    finally:
        with contextlib.suppress(Exception):
            if isinstance(dst, socket.socket):
                dst.shutdown(socket.SHUT_WR)
            else:
                dst.shutdown_write()
        on_done()


class Link:
    """One accepted TCP connection pumped both ways to its remote end (a channel, a socket).

    When both directions are done, both ends are closed and ``on_closed(link)`` runs.
    """

    def __init__(
        self, client: socket.socket, remote: Any, name: str, on_closed: Callable[[Link], Any]
    ) -> None:
        self.client, self.remote, self.name, self.on_closed = client, remote, name, on_closed
        self._remaining = 2
        self._lock = threading.Lock()

    def start(self) -> None:
        for src, dst, direction in (
            (self.client, self.remote, "up"),
            (self.remote, self.client, "down"),
        ):
            threading.Thread(
                target=_pump,
                args=(src, dst, self._half_done),
                name=f"{self.name}-{direction}",
                daemon=True,
            ).start()

    def _half_done(self) -> None:
        with self._lock:
            self._remaining -= 1
            last = self._remaining == 0
        if last:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.remote.close()
        with contextlib.suppress(Exception):
            self.client.close()
        self.on_closed(self)


class ListenError(OrchestratorError):
    """A local port could not be listened on."""


class LocalForward:
    """``127.0.0.1:local_port``, each connection joined to a stream from :meth:`open_remote`."""

    def __init__(self, local_port: int = 0, *, bind: str = "127.0.0.1", fall_back: bool = False):
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            try:
                self.listener.bind((bind, local_port))
            except OSError:
                if not (fall_back and local_port):
                    raise
                self.listener.bind((bind, 0))  # the old port is taken: any free one
        except OSError as e:
            self.listener.close()
            raise ListenError(f"cannot listen on {bind}:{local_port}: {e.strerror}") from None
        self.listener.listen(64)
        self.listener.setblocking(False)
        self.local_port: int = self.listener.getsockname()[1]
        self._links: set[Link] = set()
        self._closed = False

    def open_remote(self) -> tuple[Any, Callable[[], None]] | None:
        """A stream to the kernel's port and what to call once it is done (None: failed)."""
        raise NotImplementedError

    def accept_one(self) -> None:
        """Called by the acceptor when the listener is readable."""
        try:
            client, _ = self.listener.accept()
        except (BlockingIOError, OSError):
            return
        client.setblocking(True)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(
            target=self._join, args=(client,), daemon=True, name=f"fwd-{self.local_port}-open"
        ).start()

    def _join(self, client: socket.socket) -> None:
        opened = self.open_remote()
        if opened is None:
            client.close()
            return
        remote, done = opened
        if self._closed:
            done()
            with contextlib.suppress(Exception):
                remote.close()
            client.close()
            return

        def closed(link: Link) -> None:
            self._links.discard(link)
            done()

        link = Link(client, remote, f"fwd-{self.local_port}", closed)
        self._links.add(link)
        link.start()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            self.listener.close()
        for link in list(self._links):
            link.close()


class Acceptor:
    """One thread accepting on every listening socket of the process's forwards."""

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._thread = threading.Thread(target=self._run, name="forward-acceptor", daemon=True)
        self._thread.start()

    def add(self, forward: LocalForward) -> None:
        with self._lock:
            self._selector.register(forward.listener, selectors.EVENT_READ, forward)
        self._wake_w.send(b"x")

    def remove(self, forward: LocalForward) -> None:
        with self._lock, contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(forward.listener)
        self._wake_w.send(b"x")

    def _run(self) -> None:
        while True:
            for key, _ in self._selector.select(timeout=1.0):
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        self._wake_r.recv(4096)
                    continue
                key.data.accept_one()


_acceptor: Acceptor | None = None
_acceptor_lock = threading.Lock()


def acceptor() -> Acceptor:
    global _acceptor
    with _acceptor_lock:
        if _acceptor is None:
            _acceptor = Acceptor()
        return _acceptor


@reset_in_child
def _reset_after_fork() -> None:
    """The parent's acceptor thread does not run in a forked child."""
    global _acceptor, _acceptor_lock
    _acceptor = None
    _acceptor_lock = threading.Lock()
