"""A minimal Jupyter kernel, for counting the orchestrator's own cost at scale.

It speaks just enough of the kernel protocol for a manager, a gateway and their clients
to treat it as a kernel: it binds the five ports of its connection file, echoes
heartbeats, answers ``kernel_info_request`` (shell and control), ``execute_request``
(nothing is run: every cell succeeds and prints nothing), ``interrupt_request`` and
``shutdown_request``, signs with the connection file's key (HMAC-SHA256), and
publishes the busy/idle statuses around each request. About 20 MB of memory where an
ipykernel takes 50 or more: what is measured is the orchestrator, not the kernels.

Usage: ``python minimal_kernel.py -f CONNECTION_FILE`` (standard library and pyzmq).
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import sys
import uuid
from typing import Any

import zmq

DELIM = b"<IDS|MSG>"


def main(argv: list[str]) -> int:
    info = json.loads(open(argv[argv.index("-f") + 1]).read())  # noqa: SIM115
    key = str(info.get("key") or "").encode()
    session = uuid.uuid4().hex
    count = 0
    ctx = zmq.Context()

    def bind(kind: int, channel: str) -> zmq.Socket[bytes]:
        sock = ctx.socket(kind)
        sock.bind(f"{info.get('transport', 'tcp')}://{info['ip']}:{info[channel + '_port']}")
        return sock

    shell, control = bind(zmq.ROUTER, "shell"), bind(zmq.ROUTER, "control")
    iopub, stdin, hb = bind(zmq.PUB, "iopub"), bind(zmq.ROUTER, "stdin"), bind(zmq.REP, "hb")

    def sign(parts: list[bytes]) -> bytes:
        if not key:
            return b""
        mac = hmac.new(key, digestmod=hashlib.sha256)
        for part in parts:
            mac.update(part)
        return mac.hexdigest().encode()

    def send(
        sock: zmq.Socket[bytes],
        idents: list[bytes],
        msg_type: str,
        content: dict[str, Any],
        parent: dict[str, Any],
    ) -> None:
        header = {
            "msg_id": uuid.uuid4().hex,
            "msg_type": msg_type,
            "session": session,
            "username": "kernel",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "version": "5.3",
        }
        parts = [json.dumps(x).encode() for x in (header, parent, {}, content)]
        sock.send_multipart([*idents, DELIM, sign(parts), *parts])

    def status(state: str, parent: dict[str, Any]) -> None:
        send(iopub, [b"kernel.status"], "status", {"execution_state": state}, parent)

    info_reply = {
        "status": "ok",
        "protocol_version": "5.3",
        "implementation": "minimal",
        "implementation_version": "1",
        "language_info": {"name": "python", "version": "3", "file_extension": ".py"},
        "banner": "a minimal kernel for benchmarks",
        "help_links": [],
    }
    poller = zmq.Poller()
    # stdin is held (and read) for as long as the kernel runs: a socket dropped would be
    # collected, its port closed, and every client's stdin channel would try to
    # reconnect ten times a second.
    for sock in (shell, control, stdin, hb):
        poller.register(sock, zmq.POLLIN)
    while True:
        for sock, _ in poller.poll():
            frames = sock.recv_multipart()
            if sock is stdin:
                continue  # (no input is ever asked for)
            if sock is hb:
                sock.send_multipart(frames)
                continue
            if DELIM not in frames:
                continue
            at = frames.index(DELIM)
            idents, parts = frames[:at], frames[at + 2 : at + 6]
            if len(parts) < 4 or not hmac.compare_digest(sign(parts), frames[at + 1]):
                continue  # unsigned or forged: ignored, as a kernel must
            parent = json.loads(parts[0])
            kind = parent.get("msg_type", "")
            status("busy", parent)
            if kind == "kernel_info_request":
                send(sock, idents, "kernel_info_reply", info_reply, parent)
            elif kind == "execute_request":
                count += 1
                reply = {"status": "ok", "execution_count": count, "user_expressions": {}}
                send(sock, idents, "execute_reply", reply, parent)
            elif kind == "interrupt_request":
                send(sock, idents, "interrupt_reply", {"status": "ok"}, parent)
            elif kind == "shutdown_request":
                restart = bool(json.loads(parts[3]).get("restart"))
                send(sock, idents, "shutdown_reply", {"status": "ok", "restart": restart}, parent)
                status("idle", parent)
                return 0
            status("idle", parent)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
