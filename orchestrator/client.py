"""Kernel clients that follow their kernel when its endpoint moves.

jupyter_client's clients copy the connection info once, when they are made. A client
kept across a restart that gives the kernel a new address (a new pod, a new container
on a network) would send to the dead one forever. The clients our managers hand out
(``km.client()``) are told by their manager when the endpoint moves
(:mod:`orchestrator.endpoint`) and reconnect every channel they opened to the new
address, keeping their session; code that held the client carries on unchanged.
"""

from __future__ import annotations

import typing as t

from jupyter_client.asynchronous.client import AsyncKernelClient as _AsyncKernelClient
from jupyter_client.blocking.client import BlockingKernelClient as _BlockingKernelClient

_SOCKET_CHANNELS = ("shell", "iopub", "stdin", "control")


class RetargetableClientMixin:
    """Adds :meth:`retarget` to a jupyter_client kernel client."""

    if t.TYPE_CHECKING:
        session: t.Any
        hb_channel: t.Any
        _hb_channel: t.Any

        def load_connection_info(self, info: t.Any) -> None: ...

    def retarget(self, info: t.Mapping[str, t.Any]) -> None:
        """Point this client at the kernel's new endpoint ``info``.

        Channels that exist are given a socket connected to the new address in place
        of the old one (messages queued for the dead process go with the old socket);
        a running heartbeat is restarted there. Channels not made yet simply use the
        new address when they are.
        """
        self.load_connection_info(dict(info))
        for name in _SOCKET_CHANNELS:
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
