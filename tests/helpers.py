"""Helpers shared by tests: kernels started by *another* orchestrator process, and
common assertions."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

_STARTER = textwrap.dedent(
    """
    import asyncio, json, sys
    from orchestrator import AsyncKernelManager

    async def main(count, code, hang):
        out = []
        for _ in range(count):
            km = AsyncKernelManager(kernel_name="python3")
            await km.start_kernel()
            kc = km.client(); kc.start_channels()
            await kc.wait_for_ready(timeout=60)
            if code:
                reply = await kc.execute_interactive(code, timeout=60, output_hook=lambda m: None)
                assert reply["content"]["status"] == "ok", reply["content"]
            kc.stop_channels()
            out.append({"id": km.kernel_id, "pid": km.provisioner.pid})
            km.detach()
        print(json.dumps(out), flush=True)
        if hang:
            await asyncio.sleep(3600)

    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3] == "hang"))
    """
)


def start_kernels_elsewhere(count: int = 1, code: str = "", hang: bool = False):  # type: ignore[no-untyped-def]
    """Start ``count`` kernels in a separate Python process (the env points at the test store).

    Returns ``(kernels, process)``: kernels as ``[{"id", "pid"}]``; with ``hang`` the
    process keeps running (so a test can ``kill -9`` it), otherwise it has exited.
    """
    import json

    proc = subprocess.Popen(
        [sys.executable, "-c", _STARTER, str(count), code, "hang" if hang else "exit"],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not hang:
        proc.wait(60)
    if not line:
        raise RuntimeError("kernel-starting process failed")
    return json.loads(line), proc


async def stream_output(kc, msg_id: str, timeout: float = 10) -> str:  # type: ignore[no-untyped-def]
    """The stream text a cell printed, read from IOPub until the kernel is idle again."""
    out = ""
    while True:
        msg = await kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            out += msg["content"]["text"]
        if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return out


async def start_is_refused_for_plain_text(km: Any, what: str) -> None:
    """``km``'s start fails because its kernel (``what``: its Python or image) ignored
    its CurveZMQ keys, with an error naming the package to upgrade and the setting."""
    import pytest

    from orchestrator.errors import OrchestratorError

    with pytest.raises(OrchestratorError) as info:
        await km.start_kernel()
    message = str(info.value)
    assert what in message and "ipykernel >= 7" in message, message
    assert "transport_encryption 'auto' refuses plain text" in message, message
    assert "transport_encryption = 'disabled'" in message, message
