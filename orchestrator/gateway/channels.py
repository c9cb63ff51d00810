"""Kernel websockets that carry on across restarts done elsewhere.

A restart replaces the kernel process behind the same ports. JupyterLab keeps its
websocket open when the restart came from elsewhere (another client, another gateway
replica, the auto-restarter: EG #903, jupyterlab#8013), and so do other clients. The
websocket's zmq sockets then reach the new process on their own, each on its own
reconnect timer: when the shell socket gets there before the iopub subscription has,
the kernel answers the client's next request and publishes its outputs and its "idle"
to nobody. The cell hangs, or shows no output.

So each connection watches its iopub socket with a zmq socket monitor. From the moment
it loses the kernel until the kernel is proven to publish to it again, what the client
sends is held, then sent on in order. The proof starts once iopub has reconnected:
``kernel_info_request`` on transient shell *and* control channels (control is answered
while a cell runs, and ipykernel publishes a status for it), repeated until iopub
delivers a message caused by one of them. A kernel that does not come back within
``hold_seconds`` gets the held messages anyway, as it would have without the hold.

A restart may also *move* the kernel (a new pod has a new IP), or be done by another
gateway replica, after which this replica's tunnel or forward must be pointed at the
new process before anything gets through. So while a connection holds, it asks the
manager every second to catch up with the kernel's record (a restart elsewhere is
followed at once, not at the next request), and when the manager reports that the
endpoint moved (:mod:`orchestrator.endpoint`), the connection replaces its zmq streams
with new ones on the new address and proves iopub there as above.

What a hold keeps is bounded per user (``hold_bytes_per_user``) across all of their
websockets, and each frame by the gateway's ``max_websocket_message``: a tenant who
restarts their own kernel and floods the socket meanwhile pins no memory. The other
way, what a kernel sends is bounded per message (``GatewayApp.max_kernel_message``,
zmq's MAXMSGSIZE) and per client (``max_client_backlog``): a kernel that floods a
client which does not read gets that websocket closed instead of the gateway's memory.
"""

from __future__ import annotations

import asyncio
import collections
import typing as t
import uuid

import zmq
from jupyter_server.services.kernels.connection.channels import ZMQChannelsWebsocketConnection
from tornado.ioloop import IOLoop, PeriodicCallback
from traitlets import Float, Int
from zmq.eventloop.zmqstream import ZMQStream
from zmq.utils.monitor import parse_monitor_message

from .fairness import message_bytes

_WATCHED_EVENTS = zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
PROBE_INTERVAL = 0.5  # seconds between probes (jupyter_server's nudge uses the same)
CATCH_UP_INTERVAL = 1.0  # seconds between looks at the record while a kernel is away


class _Probe:
    """Transient shell and control channels asking the kernel for ``kernel_info`` until
    the connection's iopub delivers a message caused by one of the requests."""

    def __init__(self, connection: RestartProofWebsocketConnection) -> None:
        self.connection = connection
        self.msg_ids: set[str] = set()
        km = connection.kernel_manager
        self.channels = [km.connect_shell(), km.connect_control()]
        self.timer: object | None = None
        self.send()

    def send(self) -> None:
        for channel in self.channels:
            if not channel.closed():
                sent = self.connection.session.send(channel, "kernel_info_request")
                if sent is not None:
                    self.msg_ids.add(sent["header"]["msg_id"])
        self.timer = IOLoop.current().call_later(PROBE_INTERVAL, self.send)

    def stop(self) -> None:
        if self.timer is not None:
            IOLoop.current().remove_timeout(self.timer)
            self.timer = None
        for channel in self.channels:
            if not channel.closed():
                channel.close(linger=0)


class RestartProofWebsocketConnection(ZMQChannelsWebsocketConnection):
    """jupyter_server's kernel websocket, holding the client's messages while the
    kernel's iopub is away (see the module docstring)."""

    hold_seconds = Float(
        120.0,
        config=True,
        help="Most seconds a client's messages are held while its kernel is away (being"
        " restarted: a container or pod may take a while), before they are sent anyway.",
    )
    hold_messages = Int(
        1000,
        config=True,
        help="Most client messages held while the kernel is away; past it, all are sent on.",
    )
    hold_bytes_per_user = Int(
        16 * 1024 * 1024,
        config=True,
        help="Most bytes of client messages held for one user, over all their websockets,"
        " while kernels are away; a websocket whose message would pass it is closed (1009)"
        " after what it held is sent on, so no tenant can pin the gateway's memory.",
    )

    max_client_backlog = Int(
        64 * 1024 * 1024,
        config=True,
        help="Most bytes of kernel output queued for a client that does not read them (a"
        " kernel flooding a slow or stalled client); past it the websocket is closed"
        " (1008), so no kernel can make the gateway buffer without end. 0: no limit.",
    )

    #: user name -> bytes held for them now, over all their connections
    _held_by_user: t.ClassVar[collections.Counter[str]] = collections.Counter()
    _held_bytes: int = 0

    _closed: bool = False
    _monitor: ZMQStream | None = None
    _held: list[t.Any] | None = None  # None: not holding
    _hold_timer: object | None = None
    _probe: _Probe | None = None
    _catch_up: PeriodicCallback | None = None
    _catching_up: asyncio.Future[t.Any] | None = None

    @classmethod
    def kernel_moved(cls, kernel_id: str) -> None:
        """The endpoint of ``kernel_id`` moved: every open websocket on it reconnects."""
        for connection in list(cls._open_sockets):
            if isinstance(connection, cls) and connection.kernel_id == kernel_id:
                connection._reconnect_streams()

    def create_stream(self) -> None:
        """jupyter_server's, but the zmq sockets take a routing identity of this
        connection's own (the session id and a random suffix) instead of the session id
        alone. Two websockets of one session can be open at once: a client reconnecting
        while its previous websocket is still being set up (JupyterLab does, on opening a
        notebook), or this connection's own streams replaced when the kernel moved. The
        kernel's ROUTER keeps the first peer of an identity and drops the second's
        messages, so the newer websocket's requests went unanswered until a ping
        timeout: the kernel never looked ready in JupyterLab. Shell and stdin still
        share one identity (``input()`` prompts follow the cell's)."""
        identity = self.session.bsession + b"." + uuid.uuid4().hex[:12].encode()
        for channel in ("iopub", "shell", "control", "stdin"):
            connect = getattr(self.kernel_manager, "connect_" + channel)
            self.channels[channel] = stream = connect(identity=identity)
            stream.channel = channel

    def connect(self) -> asyncio.Future[None] | None:  # type: ignore[override]
        connected = super().connect()
        if connected is not None:
            # Watch from when the connection works: before, jupyter_server's own nudge
            # owns iopub, and tornado delivers no client message until it is done.
            connected.add_done_callback(lambda _: self._watch_iopub())
        return connected

    def disconnect(self) -> None:  # type: ignore[override]
        self._closed = True
        self._stop_watching()
        self._end_hold()  # what the client sent before it left goes, as it would have
        super().disconnect()

    def handle_incoming_message(self, incoming_msg: str) -> None:
        if self._held is not None:
            size = message_bytes(incoming_msg)
            user = self._user()
            if self._held_by_user[user] + size > self.hold_bytes_per_user:
                self.log.warning(
                    "kernel %s: %s sent more than %d bytes while the kernel was away;"
                    " closing that websocket",
                    self.kernel_id,
                    user,
                    self.hold_bytes_per_user,
                )
                try:
                    self._end_hold()
                finally:
                    self.websocket_handler.close(1009, "too much sent while the kernel restarts")
                return
            if len(self._held) < self.hold_messages:
                self._held.append(incoming_msg)
                self._held_bytes += size
                self._held_by_user[user] += size
                return
            self._end_hold()  # keep the order: the held ones first
        super().handle_incoming_message(incoming_msg)

    def _user(self) -> str:
        user = getattr(self.websocket_handler, "current_user", None)
        return str(getattr(user, "username", "") or "")

    def _client_backlog(self) -> int:
        """Bytes written to the client's socket and not yet sent (Tornado's buffer)."""
        stream = getattr(getattr(self.websocket_handler, "ws_connection", None), "stream", None)
        buffer = getattr(stream, "_write_buffer", None)
        return len(buffer) if buffer is not None else 0

    def handle_outgoing_message(self, stream: t.Any, outgoing_msg: list[t.Any]) -> None:
        if self.max_client_backlog and self._client_backlog() > self.max_client_backlog:
            if not self._closed:
                self._closed = True
                self.log.warning(
                    "kernel %s: its client reads slower than the kernel writes (more than %d"
                    " bytes queued); closing that websocket",
                    self.kernel_id,
                    self.max_client_backlog,
                )
                self.websocket_handler.close(1008, "client too slow for its kernel's output")
            return
        probe = self._probe
        if probe is not None:  # parsed only while proving: no cost otherwise
            channel = stream if isinstance(stream, str) else getattr(stream, "channel", None)
            if channel == "iopub" and self._parent_msg_id(outgoing_msg) in probe.msg_ids:
                self.log.info("kernel %s: iopub back", self.kernel_id)
                self._end_hold()
        # Relayed like everything else, as jupyter_server relays its nudge's statuses.
        super().handle_outgoing_message(stream, outgoing_msg)

    # ----------------------------------------------------------- iopub watch
    def _watch_iopub(self) -> None:
        iopub = self.channels.get("iopub")
        if self._closed or self._monitor is not None or iopub is None or iopub.closed():
            return
        address = f"inproc://kernel-ws-monitor-{uuid.uuid4().hex}"
        iopub.socket.monitor(address, _WATCHED_EVENTS)
        # A plain (not asyncio) socket, whatever the context's default, for ZMQStream.
        pair = iopub.socket.context.socket(zmq.PAIR, socket_class=zmq.Socket)
        pair.connect(address)
        self._monitor = ZMQStream(pair)
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
        if event == zmq.EVENT_DISCONNECTED:
            # Lost again while proving: only a probe after the next handshake counts.
            self._stop_probe()
            if self._held is None:
                self.log.info("kernel %s: iopub lost; holding client messages", self.kernel_id)
                self._start_hold()
        elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED and self._held is not None:
            self._stop_probe()
            try:
                self._probe = _Probe(self)
            except Exception as e:  # e.g. the kernel is being shut down
                self.log.warning("kernel %s: cannot probe its iopub: %s", self.kernel_id, e)
                self._end_hold()

    def _start_hold(self) -> None:
        self._held = []
        self._hold_timer = IOLoop.current().call_later(self.hold_seconds, self._give_up)
        catch_up = getattr(self.multi_kernel_manager, "catch_up", None)
        if catch_up is not None and self._catch_up is None:
            self._catch_up = PeriodicCallback(self._look_at_record, CATCH_UP_INTERVAL * 1000)
            self._catch_up.start()

    def _look_at_record(self) -> None:
        """Have the manager follow a restart done elsewhere (one look at a time)."""
        if self._catching_up is not None and not self._catching_up.done():
            return
        self._catching_up = asyncio.ensure_future(
            self.multi_kernel_manager.catch_up(self.kernel_id)
        )

    def _reconnect_streams(self) -> None:
        """The kernel moved: replace this connection's zmq streams with new ones on its
        new address, and hold what the client sends until iopub is proven there."""
        if self._closed or not self.channels:
            return
        self.log.info("kernel %s moved; reconnecting its websocket's channels", self.kernel_id)
        self._stop_watching()
        self._stop_probe()
        old, self.channels = self.channels, {}
        for stream in old.values():
            if not stream.closed():
                stream.close(linger=0)
        self.create_stream()
        for stream in self.channels.values():
            stream.on_recv_stream(self.handle_outgoing_message)
        if self._held is None:
            self._start_hold()
        self._watch_iopub()

    def _parent_msg_id(self, msg_list: list[t.Any]) -> str | None:
        try:
            _, frames = self.session.feed_identities(msg_list)
            msg = self.session.deserialize(frames, content=False)
        except Exception:  # not ours to judge: relay it as jupyter_server would
            return None
        return t.cast(str | None, msg["parent_header"].get("msg_id"))

    def _stop_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.stop()

    def _give_up(self) -> None:
        self._hold_timer = None
        self.log.warning(
            "kernel %s: iopub not back after %ss; sending %d held client messages on",
            self.kernel_id,
            self.hold_seconds,
            len(self._held or ()),
        )
        self._end_hold()

    def _end_hold(self) -> None:
        """Stop holding (and proving), and send what was held, in order."""
        self._stop_probe()
        if self._catch_up is not None:
            self._catch_up.stop()
            self._catch_up = None
        held, self._held = self._held, None
        if self._held_bytes:
            user = self._user()
            self._held_by_user[user] -= self._held_bytes
            if self._held_by_user[user] <= 0:
                del self._held_by_user[user]
            self._held_bytes = 0
        if self._hold_timer is not None:
            IOLoop.current().remove_timeout(self._hold_timer)
            self._hold_timer = None
        if held and self.channels:
            self.log.info("kernel %s: sending %d held messages", self.kernel_id, len(held))
            for message in held:
                try:
                    super().handle_incoming_message(message)
                except Exception as e:  # a malformed message must not cost the others
                    self.log.warning(
                        "kernel %s: a held client message was not sent: %r", self.kernel_id, e
                    )
