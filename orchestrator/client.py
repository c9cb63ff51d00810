"""Kernel clients that follow their kernel when its endpoint moves.

jupyter_client's clients copy the connection info once, when they are made. A client
kept across a restart that gives the kernel a new address (a new pod, a new container
on a network) would send to the dead one forever. The clients our managers hand out
(``km.client()``) are told by their manager when the endpoint moves
(:mod:`orchestrator.endpoint`) and reconnect every channel they opened to the new
address, keeping their session; code that held the client carries on unchanged.

A restart that keeps the address is no better for a kept client: its sockets reconnect
to the new kernel process each on its own timer, and when the next request reaches the
kernel before the iopub subscription has, its output is published to nobody (the cell
"runs" and shows nothing). So after every transition that replaces the kernel process
(a restart here, a restart followed from elsewhere) the manager *rejoins* its clients:
new sockets, and the wait (bounded) until their iopub is proven to receive from the new
process, before the restart returns. A reader waiting on a channel meanwhile (a task
reading iopub) carries on with the new socket.
"""

from __future__ import annotations

import asyncio
import time
import typing as t

import zmq
import zmq.asyncio
from jupyter_client.asynchronous.client import AsyncKernelClient as _AsyncKernelClient
from jupyter_client.blocking.client import BlockingKernelClient as _BlockingKernelClient
from jupyter_client.channels import AsyncZMQSocketChannel, ZMQSocketChannel
from jupyter_client.session import Session
from traitlets import Type

PROBE_INTERVAL_MS = 200


class RetargetableClientMixin:
    """Adds :meth:`retarget` to a jupyter_client kernel client."""

    _socket_generation = 0  # (how many times the sockets were replaced)

    if t.TYPE_CHECKING:
        session: t.Any
        hb_channel: t.Any
        _hb_channel: t.Any

        def load_connection_info(self, info: t.Any) -> None: ...

    async def rejoin(self, info: t.Mapping[str, t.Any], timeout: float = 10.0) -> bool:
        """:meth:`retarget` to ``info``, then prove (at most ``timeout``) that this client's
        iopub receives from the kernel's new process, as ``wait_for_ready`` does for a
        new client: ``kernel_info_request`` on a transient shell socket, until the kept
        iopub socket has a message. The probe uses a session of its own, so its replies
        and statuses can never be mistaken for the caller's (whose message ids are
        counted per session). False if iopub stayed silent."""
        self.retarget(info)
        channel = getattr(self, "_iopub_channel", None)
        iopub = getattr(channel, "socket", None)
        if iopub is None:
            return True
        probe = Session(key=self.session.key, signature_scheme=self.session.signature_scheme)
        shell = self._create_connected_socket("shell")  # type: ignore[attr-defined]
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                probe.send(shell, "kernel_info_request")
                ready = iopub.poll(PROBE_INTERVAL_MS)
                if isinstance(iopub, zmq.asyncio.Socket):
                    ready = await ready
                if ready:
                    return True
            return False
        finally:
            shell.close(linger=0)

    def retarget(self, info: t.Mapping[str, t.Any]) -> None:
        """Point this client at the kernel's new endpoint ``info``.

        Channels that exist are given a socket connected to the new address in place
        of the old one (messages queued for the dead process go with the old socket);
        a running heartbeat is restarted there. Channels not made yet simply use the
        new address when they are.

        The new sockets take a routing identity of their own (:meth:`_next_identity`):
        the old ones may already have reconnected to the new process (a restart that
        keeps the address) and the kernel's ROUTER may not have seen them close yet.
        Most kernels' ROUTERs keep the first peer of an identity and drop a second
        one's messages, so the kept client's next request went unanswered.
        """
        self.load_connection_info(dict(info))
        identity = self._next_identity()
        for name in ("iopub", "shell", "stdin", "control"):
            channel = getattr(self, f"_{name}_channel", None)
            if channel is None or getattr(channel, "socket", None) is None:
                continue
            old = channel.socket
            connect = getattr(self, f"connect_{name}")
            channel.socket = connect(identity=identity)
            if hasattr(channel, "stream") and channel.stream is not None:  # threaded channels
                channel.stream.socket = channel.socket
            old.close(linger=0)
        hb = self._hb_channel
        if hb is not None:
            running = hb.is_alive()
            if running:
                hb.stop()
            self._hb_channel = None
            if running:
                self.hb_channel.start()

    def _next_identity(self) -> bytes:
        """A routing identity for this client's next sockets: the session's, with a
        generation number. Shell and stdin share it (a kernel sends ``input()``
        prompts to the identity that sent the cell); the session itself, which every
        message header carries, stays the same."""
        self._socket_generation += 1
        return self.session.bsession + b"." + str(self._socket_generation).encode()


class FollowingChannel(ZMQSocketChannel):
    """A blocking channel whose reader carries on when a rejoin swaps its socket."""

    def get_msg(self, timeout: float | None = None) -> dict[str, t.Any]:
        while True:
            socket = self.socket
            try:
                return super().get_msg(timeout)
            except zmq.ZMQError:
                if self.socket is socket or self.socket is None:
                    raise
                # Closed under us by a rejoin (another thread): read the new socket.


class AsyncFollowingChannel(AsyncZMQSocketChannel):
    """An async channel whose reader carries on when a rejoin swaps its socket (pyzmq
    cancels what was waiting on the old one: that is not the reader's cancellation)."""

    async def get_msg(self, timeout: float | None = None) -> dict[str, t.Any]:  # type: ignore[override]
        while True:
            socket = self.socket
            try:
                return await super().get_msg(timeout)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                # (Python 3.11+ tells a real cancellation apart; before, never retried)
                cancelling = getattr(task, "cancelling", lambda: 1)() if task else 1
                if cancelling or self.socket is socket or self.socket is None:
                    raise
                # The socket was swapped by a rejoin: wait on the new one.


class BlockingKernelClient(RetargetableClientMixin, _BlockingKernelClient):
    """jupyter_client's blocking client, retargeted when its kernel's endpoint moves."""

    shell_channel_class = Type(FollowingChannel)  # type: ignore[assignment]
    iopub_channel_class = Type(FollowingChannel)  # type: ignore[assignment]
    stdin_channel_class = Type(FollowingChannel)  # type: ignore[assignment]
    control_channel_class = Type(FollowingChannel)  # type: ignore[assignment]


class AsyncKernelClient(RetargetableClientMixin, _AsyncKernelClient):
    """jupyter_client's async client, retargeted when its kernel's endpoint moves."""

    shell_channel_class = Type(AsyncFollowingChannel)  # type: ignore[assignment]
    iopub_channel_class = Type(AsyncFollowingChannel)  # type: ignore[assignment]
    stdin_channel_class = Type(AsyncFollowingChannel)  # type: ignore[assignment]
    control_channel_class = Type(AsyncFollowingChannel)  # type: ignore[assignment]
