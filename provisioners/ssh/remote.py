"""How the launcher reaches a remote host: a constant command line, the source on stdin.

Only the remote Python path (shell-quoted) varies in the command line; the
launcher's source and the JSON requests go over stdin, so nothing user-supplied
ever reaches a remote shell.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from orchestrator.errors import OrchestratorError

_SOURCE = (Path(__file__).with_name("launcher.py")).read_bytes()
_BOOTSTRAP = (
    "import sys;b=sys.stdin.buffer;n=int(b.readline());"
    "exec(compile(b.read(n),'ko-launcher','exec'),{'__name__':'ko-launcher'})"
)


class RemoteError(OrchestratorError):
    """The launcher on the remote host reported a failure."""


def launcher_command(python: str) -> str:
    return f"{shlex.quote(python)} -c {shlex.quote(_BOOTSTRAP)}"


def launcher_stdin(first_request: dict[str, Any]) -> bytes:
    """What the launcher reads first: its own source, then one request line."""
    return str(len(_SOURCE)).encode() + b"\n" + _SOURCE + json.dumps(first_request).encode() + b"\n"
