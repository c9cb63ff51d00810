"""Facts about local processes, read from ``/proc`` (with portable fallbacks).

Re-attaching to a process by pid alone is unsafe: after the kernel exits its pid can
be reused by an unrelated process, which we would then signal. So a process is
identified by ``(pid, start_ticks)``: the start time in clock ticks since boot
(field 22 of ``/proc/PID/stat``), which a reused pid does not share.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from .forks import reset_in_child

_PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = (_PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after it.
    rest = raw[raw.rfind(")") + 2 :].split()
    return rest  # rest[0] is field 3 (state)


_machine_id: str | None = None


def machine_id() -> str:
    """Where a pid means this process's pid: the boot id and the pid namespace ('' if
    unknown). Two machines, or two containers, may share a host name, never this.
    Read once per process (a restore asks it for every kernel); a forked child, which
    may be in a new pid namespace, reads it again."""
    global _machine_id
    if _machine_id is not None:
        return _machine_id
    found = _read_machine_id()
    boot, _, pidns = found.partition("/")
    if boot and pidns:  # (a failed read, out of descriptors say, is not kept)
        _machine_id = found
    return found


def _read_machine_id() -> str:
    try:
        boot = (_PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return ""
    try:
        pidns = os.readlink(_PROC / "self" / "ns" / "pid")
    except OSError:
        pidns = ""
    return f"{boot}/{pidns}"


@reset_in_child
def _forget_machine_id() -> None:
    global _machine_id
    _machine_id = None


#: Minimal inits (Docker's ``--init`` is tini) that exit when their one child exits.
_CONTAINER_INITS = frozenset({"tini", "docker-init", "dumb-init", "catatonit"})


def namespace_ends_with_me() -> bool:
    """True when this pid namespace ends when this process ends: it is the namespace's
    init, or the only child of a minimal init (a container's). When a namespace's init
    exits, every process in it is killed, so a local kernel there cannot outlive us."""
    if os.getpid() == 1:
        return True
    if os.getppid() != 1:
        return False
    try:
        init = (_PROC / "1" / "comm").read_text().strip()
    except OSError:
        return False
    return init in _CONTAINER_INITS


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if unknown."""
    fields = _stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    return int(fields[19])  # field 22


def uptime_ticks() -> int | None:
    try:
        seconds = float((_PROC / "uptime").read_text().split()[0])
    except OSError:
        return None
    return int(seconds * os.sysconf("SC_CLK_TCK"))


def age_seconds(pid: int) -> float | None:
    """How long ago the process started, or None if unknown."""
    start, now = start_ticks(pid), uptime_ticks()
    if start is None or now is None:
        return None
    return (now - start) / os.sysconf("SC_CLK_TCK")


def is_running(pid: int | None, expected_start: int | None = None) -> bool:
    """True if ``pid`` is a live (non-zombie) process started at ``expected_start``."""
    if not pid:
        return False
    fields = _stat_fields(pid)
    if fields is None:
        if _PROC.is_dir():
            return False
        try:  # no /proc (macOS): existence is the best we can do
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if fields[0] in ("Z", "X"):
        return False
    return expected_start is None or int(fields[19]) == expected_start


def environ(pid: int) -> dict[str, str]:
    """A process's environment (empty if unreadable)."""
    try:
        raw = (_PROC / str(pid) / "environ").read_bytes()
    except OSError:
        return {}
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        if b"=" in item:
            k, _, v = item.partition(b"=")
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env


def all_pids() -> Iterator[int]:
    try:
        names = os.listdir(_PROC)
    except OSError:
        return
    for name in names:
        if name.isdigit():
            yield int(name)


def network_namespace(pid: int | str) -> str:
    """The process's network namespace (``net:[inode]``), '' if it cannot be read."""
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return ""
