"""How the launcher reaches a remote host: a constant command line, the source on stdin.

Only the remote Python path (shell-quoted) varies in the command line; the
launcher's source and the JSON requests go over stdin, so nothing user-supplied
ever reaches a remote shell. Another provisioner can add actions of its own (the
Slurm provisioner's ``sbatch``/``squeue``): the program is the launcher's source, then
each extension's source (which adds to ``ACTIONS``), then a call of ``main()``.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

from orchestrator.errors import OrchestratorError

_KERNELSIDE = Path(__file__).parents[1] / "common" / "kernelside.py"
# The kernel-side helpers first: the launcher calls them by name.
_SOURCE = _KERNELSIDE.read_bytes() + b"\n" + Path(__file__).with_name("launcher.py").read_bytes()
_programs: dict[tuple[str, ...], bytes] = {}
_BOOTSTRAP = (
    "import sys;b=sys.stdin.buffer;n=int(b.readline());"
    "exec(compile(b.read(n),'ko-launcher','exec'),{'__name__':'ko-launcher'})"
)


class RemoteError(OrchestratorError):
    """The launcher on the remote host reported a failure."""


def launcher_command(python: str) -> str:
    return f"{shlex.quote(python)} -c {shlex.quote(_BOOTSTRAP)}"


def program(extensions: tuple[str, ...] = ()) -> bytes:
    """The launcher's source, extended by the standard-library modules at ``extensions``."""
    source = _programs.get(extensions)
    if source is None:
        parts = [_SOURCE, *(Path(p).read_bytes() for p in extensions), b"\nmain()\n"]
        source = _programs[extensions] = b"\n".join(parts)
    return source


def launcher_stdin(first_request: dict[str, Any], extensions: tuple[str, ...] = ()) -> bytes:
    """What the launcher reads first: its own source, then one request line."""
    source = program(extensions)
    return str(len(source)).encode() + b"\n" + source + json.dumps(first_request).encode() + b"\n"
