"""Kernel websockets that carry on across restarts done elsewhere.

A restart replaces the kernel process behind the same ports. JupyterLab keeps its
websocket open when the restart came from elsewhere (another client, another gateway
replica, the auto-restarter: EG #903, jupyterlab#8013), and so do other clients. The
websocket's zmq sockets then reach the new process on their own, each on its own
reconnect timer: when the shell socket gets there before the iopub subscription has,
the kernel answers the client's next request and publishes its outputs and its "idle"
to nobody. The cell hangs, or shows no output.

So each connection watches its iopub socket (a zmq socket monitor). From the moment it
loses the kernel until the new process is proven to publish to it (jupyter_server's
own nudge: kernel_info requests until one is answered on iopub), what the client sends
is held, then sent on in order. A kernel that does not come back within
``hold_seconds`` gets the held messages anyway, as it would have without the hold.
"""

from __future__ import annotations

import asyncio
import typing as t

import zmq
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
from tornado.ioloop import IOLoop
from traitlets import Float, Int
from zmq.eventloop.zmqstream import ZMQStream
from zmq.utils.monitor import parse_monitor_message

_WATCHED_EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED


class RestartProofWebsocketConnection(ZMQChannelsWebsocketConnection):
    """jupyter_server's kernel websocket, holding the client's messages while the
    kernel's iopub is away (see the module docstring)."""

    hold_seconds = Float(
        30.0,
        config=True,
        help="Most seconds a client's messages are held while its kernel is away"
        " (being restarted, or its connection re-established).",
    )
    hold_messages = Int(
        1000,
        config=True,
        help="Most client messages held while the kernel is away; past it, they are sent on.",
    )

    _monitor: ZMQStream | None = None
    _held: list[t.Any] | None = None  # None: not holding
    _hold_timer: object | None = None
    _proving: bool = False

    def connect(self) -> asyncio.Future[None] | None:  # type: ignore[override]
        connected = super().connect()
        if connected is not None:
            self._watch_iopub()
        return connected

    def disconnect(self) -> None:  # type: ignore[override]
        self._stop_watching()
        self._release()
        super().disconnect()

    def handle_incoming_message(self, incoming_msg: str) -> None:
        if self._held is not None and len(self._held) < self.hold_messages:
            self._held.append(incoming_msg)
            return
        super().handle_incoming_message(incoming_msg)

    # ----------------------------------------------------------- iopub watch
    def _watch_iopub(self) -> None:
        self._stop_watching()
        iopub = self.channels.get("iopub")
        if iopub is None or iopub.closed():
            return
        self._monitor = ZMQStream(iopub.socket.get_monitor_socket(_WATCHED_EVENTS))
        self._monitor.on_recv(self._on_iopub_event)

    def _stop_watching(self) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is None:
            return
        iopub = self.channels.get("iopub")
        if iopub is not None and not iopub.closed():
            iopub.socket.disable_monitor()
        monitor.close(linger=0)

    def _on_iopub_event(self, frames: list[bytes]) -> None:
        event = parse_monitor_message(frames)["event"]
        if event == zmq.EVENT_DISCONNECTED and self._held is None:
            self.log.info("kernel %s: iopub lost; holding client messages", self.kernel_id)
            self._held = []
            self._hold_timer = IOLoop.current().call_later(self.hold_seconds, self._give_up)
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED and self._held is not None:
            self._prove_iopub()

    def _prove_iopub(self) -> None:
        """Nudge the kernel until iopub delivers, then send what was held."""
        if self._proving:
            return  # the running nudge retries until the newest process answers
        self._proving = True
        nudged = self.nudge()

        def done(_: object) -> None:
            self._proving = False
            iopub = self.channels.get("iopub")
            if iopub is None or iopub.closed():
                return
            # nudge() took iopub's receiver for itself: give it back to the client.
            iopub.on_recv_stream(self.handle_outgoing_message)
            self._release()

        nudged.add_done_callback(done)

    def _give_up(self) -> None:
        self.log.warning(
            "kernel %s: iopub not back after %ss; sending %d held client messages on",
            self.kernel_id,
            self.hold_seconds,
            len(self._held or ()),
        )
        self._release()

    def _release(self) -> None:
        held, self._held = self._held, None
        if self._hold_timer is not None:
            IOLoop.current().remove_timeout(self._hold_timer)
            self._hold_timer = None
        if held and self.channels:
            self.log.info(
                "kernel %s: iopub back; sending %d held messages", self.kernel_id, len(held)
            )
            for message in held:
                super().handle_incoming_message(message)
