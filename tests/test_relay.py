"""The Curve relay on its own, on this machine, with a real kernel behind it.

The back-ends' use of it (Docker, Kubernetes, SSH, Slurm) is in the conformance
matrix; here is what the relay alone must get right: clients with the kernel's keys
get through, anyone else does not; ``interrupt_request``s are served only when their
signature checks out; its sockets sit in a 0700 directory; it ends with its kernel and
leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from jupyter_client.blocking import BlockingKernelClient
from jupyter_client.session import Session

from provisioners.common.kernelside import hold_free_ports

RELAY = Path(__file__).resolve().parent.parent / "provisioners" / "common" / "relay.py"
CHANNELS = ("shell", "iopub", "stdin", "control", "hb")


@pytest.fixture
def relayed(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """An ipykernel behind the relay (SIGINT for interrupts): its public connection info."""
    public, secret = zmq.curve_keypair()
    held = hold_free_ports("127.0.0.1", 5)
    info: dict[str, Any] = {
        f"{ch}_port": s.getsockname()[1] for ch, s in zip(CHANNELS, held, strict=True)
    }
    for s in held:
        s.close()
    info.update(
        ip="127.0.0.1",
        transport="tcp",
        key="relay-test-key",
        signature_scheme="hmac-sha256",
        curve_publickey=public.decode(),
        curve_secretkey=secret.decode(),
    )
    conn = tmp_path / "connection.json"
    conn.write_text(json.dumps(info))
    conn.chmod(0o600)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    proc = subprocess.Popen(
        [sys.executable, str(RELAY), "--interrupt-signal", "SIGINT", str(conn), "--", *argv],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "relay.log", "wb"),  # noqa: SIM115
        start_new_session=True,
    )
    try:
        yield {"info": info, "proc": proc, "dir": tmp_path}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(10)


def client_for(info: dict[str, Any]) -> BlockingKernelClient:
    kc = BlockingKernelClient()
    kc.load_connection_info(info)
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    return kc


def test_the_relay_carries_a_kernel_and_serves_only_signed_interrupts(
    relayed: dict[str, Any],
) -> None:
    info, proc = relayed["info"], relayed["proc"]
    kc = client_for(info)
    try:
        reply = kc.execute_interactive("print('through the relay')", timeout=30)
        assert reply["content"]["status"] == "ok"

        # its sockets: a 0700 directory of ours, named in the note beside the file
        ipc = (relayed["dir"] / "relay-ipc").read_text().strip()
        assert os.stat(ipc).st_mode & 0o777 == 0o700

        # a forged interrupt_request (another key) is not served: the cell runs on
        msg_id = kc.execute("import time; time.sleep(20); print('slept')")
        time.sleep(1)
        forged = Session(key=b"not-the-key", signature_scheme="hmac-sha256")
        control = zmq.Context.instance().socket(zmq.DEALER)
        control.curve_secretkey = info["curve_secretkey"].encode()
        control.curve_publickey = info["curve_publickey"].encode()
        control.curve_serverkey = info["curve_publickey"].encode()
        control.connect(f"tcp://127.0.0.1:{info['control_port']}")
        forged.send(control, forged.msg("interrupt_request", content={}))
        assert not control.poll(1500), "a forged interrupt_request was answered"

        # a signed one is: a signed interrupt_reply, and the cell gets KeyboardInterrupt
        request = kc.session.msg("interrupt_request", content={})
        kc.session.send(control, request)
        assert control.poll(10_000)
        _, frames = kc.session.feed_identities(control.recv_multipart())
        answer = kc.session.deserialize(frames)  # raises on a bad signature
        assert answer["msg_type"] == "interrupt_reply"
        assert answer["parent_header"]["msg_id"] == request["header"]["msg_id"]
        control.close(linger=0)
        cell = kc.get_shell_msg(timeout=10)
        assert cell["parent_header"]["msg_id"] == msg_id
        assert cell["content"]["ename"] == "KeyboardInterrupt"
    finally:
        kc.stop_channels()

    # a client without the kernel's keys gets nothing from it
    stranger = zmq.Context.instance().socket(zmq.DEALER)
    stranger.connect(f"tcp://127.0.0.1:{info['shell_port']}")
    plain = Session(key=info["key"].encode(), signature_scheme="hmac-sha256")
    plain.send(stranger, plain.msg("kernel_info_request", content={}))
    assert not stranger.poll(1500)
    stranger.close(linger=0)

    # the kernel ends, the relay ends with it and removes its sockets
    kc = client_for(info)
    kc.shutdown()
    kc.stop_channels()
    assert proc.wait(30) == 0
    assert not os.path.exists(ipc)
    assert not (relayed["dir"] / "relay-ipc").exists()
