"""Messages kept for a client that disconnected: for a while, and up to a size.

When a kernel's last websocket closes, jupyter_server keeps that session's sockets to
the kernel open and appends every message the kernel sends to a list, replayed if the
same session reconnects (a reloaded JupyterLab tab, a network blip). It keeps both for
ever: every kernel a client ever left holds five more sockets in the gateway (with a
thousand kernels, thousands of descriptors and wake-ups for nobody), and a kernel that
prints with nobody connected grows the gateway's memory without end (its own source
says "TODO: the buffer should likely be a memory bounded queue").

Here the buffer lasts ``offline_buffer_seconds`` and holds at most
``offline_buffer_bytes``; past either, it is dropped with its sockets, and a client
reconnecting later gets the kernel as a new session does (without the missed output).
"""

from __future__ import annotations

import typing as t
from functools import partial

from tornado.ioloop import IOLoop
from traitlets import Float, Int
from traitlets.config import LoggingConfigurable


class BoundedOfflineBuffers(LoggingConfigurable):
    """Mixed into the gateway's MappingKernelManager, before jupyter_server's."""

    offline_buffer_seconds = Float(
        120.0,
        config=True,
        help="How long the messages of a kernel whose client disconnected are kept for"
        " that client's session to reconnect, with the sockets they arrive on"
        " (jupyter_server keeps both for ever). 0: none are kept.",
    )
    offline_buffer_bytes = Int(
        4 * 1024 * 1024,
        config=True,
        help="Most bytes of messages kept per kernel for a reconnecting client; past it"
        " the buffer and its sockets are dropped, so a kernel that prints with nobody"
        " connected cannot grow the gateway's memory.",
    )

    if t.TYPE_CHECKING:
        _kernel_buffers: t.Any

    _expiries: dict[str, object] | None = None  # kernel id -> its buffer's time-out

    def _cancel_expiry(self, kernel_id: str) -> None:
        handle = (self._expiries or {}).pop(kernel_id, None)
        if handle is not None:
            IOLoop.current().remove_timeout(handle)

    def get_buffer(self, kernel_id: str, session_key: str) -> t.Any:
        self._cancel_expiry(kernel_id)  # (handed over, or dropped for another session)
        return super().get_buffer(kernel_id, session_key)  # type: ignore[misc]

    def stop_buffering(self, kernel_id: str) -> None:
        self._cancel_expiry(kernel_id)
        super().stop_buffering(kernel_id)  # type: ignore[misc]

    def discard_buffer(self, kernel_id: str) -> None:
        """Drop a kernel's buffer and close its sockets, even for a kernel no longer
        served here (``stop_buffering`` refuses those)."""
        self._cancel_expiry(kernel_id)
        info = self._kernel_buffers.pop(kernel_id, None)
        for stream in (info or {}).get("channels", {}).values():
            if not stream.closed():
                stream.on_recv(None)
                stream.close()

    def start_buffering(self, kernel_id: str, session_key: str, channels: dict[str, t.Any]) -> None:
        if self.offline_buffer_seconds <= 0:
            for stream in channels.values():
                stream.close()
            return
        super().start_buffering(kernel_id, session_key, channels)  # type: ignore[misc]
        info = self._kernel_buffers.get(kernel_id)
        if not info or info.get("channels") is not channels:
            return  # jupyter_server does not buffer (buffer_offline_messages is off)
        held = [0]

        def buffer_msg(channel: str, msg_parts: list[bytes]) -> None:
            held[0] += sum(len(part) for part in msg_parts)
            if held[0] > self.offline_buffer_bytes:
                self._drop_buffer(kernel_id, info, f"over {self.offline_buffer_bytes} bytes")
                return
            info["buffer"].append((channel, msg_parts))

        for channel, stream in channels.items():
            stream.on_recv(partial(buffer_msg, channel))
        if self._expiries is None:
            self._expiries = {}
        self._expiries[kernel_id] = IOLoop.current().call_later(
            self.offline_buffer_seconds,
            self._drop_buffer,
            kernel_id,
            info,
            f"no reconnect within {self.offline_buffer_seconds:g} s",
        )

    def _drop_buffer(self, kernel_id: str, info: dict[str, t.Any], why: str) -> None:
        """Drop ``info`` if it is still the kernel's buffer (not handed to a reconnect,
        nor replaced by a newer session's)."""
        if self._kernel_buffers.get(kernel_id) is not info:
            return
        self.log.info(
            "kernel %s: dropping %d message(s) kept for a disconnected client (%s)",
            kernel_id,
            len(info["buffer"]),
            why,
        )
        self.discard_buffer(kernel_id)
