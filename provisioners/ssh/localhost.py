"""The remote agent on this very host, without SSH: for an orchestrator that runs on
the host itself (a Slurm login node, say).

:class:`LocalConnection` offers the part of :class:`~orchestrator.tunnels.ssh.SSHConnection`
that :class:`~provisioners.ssh.agent.RemoteAgent` uses, and its "session channel" is a
local process reading the same program and JSON requests on stdin. So the agent, its
batching and every action are the same code whether the host is reached over SSH or
not; only the transport differs.
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.forks import reset_in_child


@dataclass(frozen=True)
class LocalTarget:
    host: str = "localhost"

    def describe(self) -> str:
        return "this host (no SSH)"


#: What the local agent gets of this process's environment: what a login shell would
#: have, and Slurm's and munge's own settings. Never the orchestrator's token, store URL
#: or database password: sbatch exports the agent's environment into every job.
AGENT_ENVIRONMENT = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LC_*",
    "TZ",
    "TMPDIR",
    "SLURM_*",
    "MUNGE_*",
)


def agent_environment(source: dict[str, str] | None = None) -> dict[str, str]:
    source = dict(os.environ if source is None else source)
    return {
        k: v for k, v in source.items() if any(fnmatch.fnmatchcase(k, p) for p in AGENT_ENVIRONMENT)
    }


class LocalChannel:
    """A local process with the methods of a paramiko session channel the agent uses."""

    def __init__(self, command: str) -> None:
        self.proc = subprocess.Popen(
            ["/bin/sh", "-c", command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
            env=agent_environment(),
        )

    @property
    def closed(self) -> bool:
        return self.proc.poll() is not None

    def exit_status_ready(self) -> bool:
        return self.proc.poll() is not None

    def sendall(self, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def recv(self, size: int) -> bytes:
        assert self.proc.stdout is not None
        return os.read(self.proc.stdout.fileno(), size)

    def recv_stderr(self, size: int) -> bytes:
        assert self.proc.stderr is not None
        return os.read(self.proc.stderr.fileno(), size)

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()  # the agent exits when its stdin closes
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class LocalConnection:
    """Always up; each "command" is a local process."""

    state = "up"
    generation = 0
    sessions_opened = 0

    def __init__(self) -> None:
        self.target = LocalTarget()

    def wait_up(self, timeout: float) -> bool:
        return True

    def subscribe(self, callback: Callable[[str], None]) -> None:
        """Never closes: nothing to tell."""

    def open_command(self, command: str, timeout: float = 60.0) -> LocalChannel:
        self.sessions_opened += 1
        return LocalChannel(command)


_local: LocalConnection | None = None
_lock = threading.Lock()


def local_connection() -> LocalConnection:
    """The one local "connection" of this process."""
    global _local
    with _lock:
        if _local is None:
            _local = LocalConnection()
        return _local


@reset_in_child
def _reset_after_fork() -> None:
    """The parent's local agent process belongs to the parent."""
    global _local, _lock
    _local = None
    _lock = threading.Lock()
