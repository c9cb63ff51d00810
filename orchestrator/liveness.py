"""Is a kernel really there? Ask it, over shell and control at once, within a deadline.

A process that exists is not proof of a usable kernel: after an orchestrator restart
the only trustworthy check is a signed ``kernel_info_request`` answered with a reply.
It goes to both channels and the first reply counts. Every kernel answers on *shell*
(the protocol requires it there; IRkernel and xeus answer nowhere else), and
ipykernel serves *control* in its own thread, so a kernel busy with a long cell still
answers there.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio
from jupyter_client.session import Session

from .encryption import without_curve


def _url(info: Mapping[str, Any], channel: str) -> str:
    transport = info.get("transport", "tcp")
    ip = info.get("ip", "127.0.0.1")
    port = info[f"{channel}_port"]
    if transport == "tcp":
        return f"tcp://{ip}:{port}"
    return f"{transport}://{ip}-{port}"


def _client_socket(
    ctx: zmq.asyncio.Context, connection_info: Mapping[str, Any], channel: str
) -> Any:
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    # A send that cannot go out (no peer: a handshake refused, a kernel gone) fails at
    # once instead of blocking its caller, and with it the event loop.
    sock.sndtimeo = 0
    pub, sec = connection_info.get("curve_publickey"), connection_info.get("curve_secretkey")
    if pub and sec:
        # jupyter_client's scheme: the client uses the kernel's keypair and pins the
        # kernel's public key as the server key.
        public = pub.encode() if isinstance(pub, str) else pub
        sock.curve_secretkey = sec.encode() if isinstance(sec, str) else sec
        sock.curve_publickey = public
        sock.curve_serverkey = public
    sock.connect(_url(connection_info, channel))
    return sock


async def kernel_info(
    connection_info: Mapping[str, Any],
    session: Session,
    timeout: float,
    channels: tuple[str, ...] = ("control", "shell"),
) -> dict[str, Any] | None:
    """The kernel's ``kernel_info_reply`` content, or None if none came within
    ``timeout``; asked on every channel of ``channels``, the first answer counts."""
    ctx = zmq.asyncio.Context.instance()
    sockets = [_client_socket(ctx, connection_info, channel) for channel in channels]
    poller = zmq.asyncio.Poller()
    try:
        request = session.msg("kernel_info_request", content={})
        for sock in sockets:
            try:
                session.send(sock, request)
            except zmq.Again:
                continue  # nobody to ask on this channel now: the others, or the next try
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready = await poller.poll(int(remaining * 1000))
            if not ready:
                return None
            for sock, _event in ready:
                frames = await sock.recv_multipart()
                _idents, msg_list = session.feed_identities(frames)
                try:
                    reply = session.deserialize(msg_list)
                except Exception:  # a reply signed with another key: not our kernel
                    continue
                if reply.get("parent_header", {}).get("msg_id") == request["header"]["msg_id"]:
                    return reply["content"]  # type: ignore[no-any-return]
    finally:
        for sock in sockets:
            sock.close(linger=0)


@dataclass
class Answer:
    """A kernel's ``kernel_info_reply``, and whether it came over CurveZMQ."""

    reply: dict[str, Any]
    encrypted: bool


async def wait_for_answer(
    connection_info: Mapping[str, Any],
    session: Session,
    timeout: float,
    *,
    alive: Any = None,
    detect_plaintext: bool = True,
) -> Answer | None:
    """Retry :func:`kernel_info` until a reply or ``timeout``; stop early if ``alive()`` says no.

    ``alive`` is an optional coroutine function; a kernel process that died while
    starting should fail the wait at once rather than at the deadline. When the
    connection info carries Curve keys and ``detect_plaintext`` is set, each round also
    asks in plain text: a kernel that ignores the keys (an ipykernel without CurveZMQ
    support) answers there, and is reported as ``Answer(..., encrypted=False)``.
    """
    curve = bool(connection_info.get("curve_secretkey"))
    plain = without_curve(dict(connection_info)) if curve and detect_plaintext else None
    deadline = time.monotonic() + timeout
    attempt = 0.5
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        reply = await kernel_info(connection_info, session, min(attempt, remaining))
        if reply is not None:
            return Answer(reply, encrypted=curve)
        if plain is not None:
            reply = await kernel_info(plain, session, 0.3)
            if reply is not None:
                return Answer(reply, encrypted=False)
        if alive is not None and not await alive():
            return None
        attempt = min(attempt * 2, 3.0)
        await asyncio.sleep(0)


async def wait_for_kernel_info(
    connection_info: Mapping[str, Any], session: Session, timeout: float, *, alive: Any = None
) -> dict[str, Any] | None:
    """The kernel's ``kernel_info_reply`` within ``timeout`` (see :func:`wait_for_answer`)."""
    answer = await wait_for_answer(
        connection_info, session, timeout, alive=alive, detect_plaintext=False
    )
    return answer.reply if answer is not None else None
