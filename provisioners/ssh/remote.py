"""Running the launcher on a remote host over a shared SSH connection.

The command line is a constant (only the remote Python path, shell-quoted, varies);
the launcher's source and the JSON request go over stdin.
"""

from __future__ import annotations

import asyncio
import json
import shlex
from pathlib import Path
from typing import Any

from orchestrator.errors import OrchestratorError
from orchestrator.tunnels.ssh import SSHConnection

_SOURCE = (Path(__file__).with_name("launcher.py")).read_bytes()
_BOOTSTRAP = (
    "import sys;b=sys.stdin.buffer;n=int(b.readline());"
    "exec(compile(b.read(n),'ko-launcher','exec'),{'__name__':'ko-launcher'})"
)


class RemoteError(OrchestratorError):
    """The launcher on the remote host reported a failure."""


def launcher_command(python: str) -> str:
    return f"{shlex.quote(python)} -c {shlex.quote(_BOOTSTRAP)}"


async def run_launcher(
    conn: SSHConnection, python: str, request: dict[str, Any], timeout: float = 60.0
) -> dict[str, Any]:
    """Run one launcher action on ``conn``'s host and return its JSON reply."""
    stdin = str(len(_SOURCE)).encode() + b"\n" + _SOURCE + json.dumps(request).encode() + b"\n"
    status, out, err = await asyncio.to_thread(conn.exec, launcher_command(python), stdin, timeout)
    host = conn.target.host
    try:
        reply = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else None
    except (ValueError, IndexError):
        reply = None
    if isinstance(reply, dict) and "error" in reply:
        raise RemoteError(f"on {host}: {reply['error']}")
    if status != 0 or not isinstance(reply, dict):
        detail = err.decode(errors="replace").strip().splitlines()[-3:] or [f"exit {status}"]
        raise RemoteError(f"launcher on {host} failed ({python}): {' '.join(detail)}")
    return reply
