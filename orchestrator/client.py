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
new sockets, and the wait (bounded) until iopub's handshake with the new process is
done, before the restart returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import typing as t
import uuid

import zmq
from jupyter_client.asynchronous.client import AsyncKernelClient as _AsyncKernelClient
from jupyter_client.blocking.client import BlockingKernelClient as _BlockingKernelClient


class RetargetableClientMixin:
    """Adds :meth:`retarget` to a jupyter_client kernel client."""

    if t.TYPE_CHECKING:
        session: t.Any
        hb_channel: t.Any
        _hb_channel: t.Any

        def load_connection_info(self, info: t.Any) -> None: ...

    _watch_handshake: bool = False  # the next socket made gets a handshake monitor...
    _handshake_pair: t.Any = None  # ... read through this PAIR socket

    def _create_connected_socket(self, channel: str, identity: bytes | None = None) -> t.Any:
        """jupyter_client's, with a handshake monitor attached before it connects when one
        is asked for (attached after, the event may already have passed)."""
        if not self._watch_handshake:
            return super()._create_connected_socket(channel, identity)  # type: ignore[misc]
        self._watch_handshake = False
        sock = self.context.socket(zmq.SUB if channel == "iopub" else zmq.DEALER)  # type: ignore[attr-defined]
        sock.linger = 1000
        if identity:
            sock.identity = identity
        if getattr(self, "curve_publickey", None) is not None:
            sock.curve_secretkey = self.curve_secretkey  # type: ignore[attr-defined]
            sock.curve_publickey = self.curve_publickey  # type: ignore[attr-defined]
            sock.curve_serverkey = self.curve_publickey  # type: ignore[attr-defined]
        address = f"inproc://ko-client-rejoin-{uuid.uuid4().hex}"
        sock.monitor(address, zmq.EVENT_HANDSHAKE_SUCCEEDED)
        pair = self.context.socket(zmq.PAIR, socket_class=zmq.Socket)  # type: ignore[attr-defined]
        pair.connect(address)  # before the socket connects: no event is missed
        self._handshake_pair = pair
        sock.connect(self._make_url(channel))  # type: ignore[attr-defined]
        return sock

    async def rejoin(self, info: t.Mapping[str, t.Any], timeout: float = 10.0) -> bool:
        """:meth:`retarget` to ``info``, then wait (at most ``timeout``) until the new iopub
        socket has completed its handshake with the kernel: its subscription goes out
        right after, before the caller's next request. False if it did not in time."""
        iopub = getattr(self, "_iopub_channel", None)
        if iopub is None or getattr(iopub, "socket", None) is None:
            self.retarget(info)
            return True
        try:
            self._watch_handshake = True
            self.retarget(info)
            pair = self._handshake_pair
            if pair is None:
                return False
            loop = asyncio.get_running_loop()
            return bool(await loop.run_in_executor(None, pair.poll, int(timeout * 1000)))
        finally:
            self._watch_handshake = False
            pair, self._handshake_pair = self._handshake_pair, None
            new = getattr(iopub, "socket", None)
            if new is not None:
                with contextlib.suppress(zmq.ZMQError):
                    new.disable_monitor()
            if pair is not None:
                pair.close(linger=0)

    def retarget(self, info: t.Mapping[str, t.Any]) -> None:
        """Point this client at the kernel's new endpoint ``info``.

        Channels that exist are given a socket connected to the new address in place
        of the old one (messages queued for the dead process go with the old socket);
        a running heartbeat is restarted there. Channels not made yet simply use the
        new address when they are.
        """
        self.load_connection_info(dict(info))
        for name in ("iopub", "shell", "stdin", "control"):  # iopub first: see rejoin
            channel = getattr(self, f"_{name}_channel", None)
            if channel is None or getattr(channel, "socket", None) is None:
                continue
            old = channel.socket
            connect = getattr(self, f"connect_{name}")
            channel.socket = connect(identity=self.session.bsession)
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


class BlockingKernelClient(RetargetableClientMixin, _BlockingKernelClient):
    """jupyter_client's blocking client, retargeted when its kernel's endpoint moves."""


class AsyncKernelClient(RetargetableClientMixin, _AsyncKernelClient):
    """jupyter_client's async client, retargeted when its kernel's endpoint moves."""
