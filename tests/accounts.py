"""OS accounts for host kernels (``ko-{username}``), made for a test session or a
benchmark run and removed after it, if they were made here."""

from __future__ import annotations

import contextlib
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def host_kernel_accounts(names: tuple[str, ...]) -> Iterator[tuple[str, ...]]:
    """The accounts ``names`` (made if missing), able to run this interpreter. Root only."""
    if os.geteuid() != 0:
        raise PermissionError("host kernels under their own accounts need root")
    created = []
    for name in names:
        try:
            pwd.getpwnam(name)
        except KeyError:
            # A home and a shell: the SSH tests log in as these accounts too. '*' is
            # "no password" without the lock ('!') that sshd refuses logins of.
            subprocess.run(
                ["useradd", "--system", "--create-home", "--shell", "/bin/sh", name], check=True
            )
            subprocess.run(["usermod", "--password", "*", name], check=True)
            Path(pwd.getpwnam(name).pw_dir).chmod(0o700)
            created.append(name)
    # The kernels must reach this interpreter (pyenv keeps it under /root): let other
    # accounts traverse, not list, the directories above it, for this run only.
    opened: list[tuple[Path, int]] = []
    for top in {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}:
        for directory in [top, *top.parents]:
            mode = directory.stat().st_mode
            if not mode & 0o001:
                opened.append((directory, mode))
                directory.chmod(mode | 0o001)
    try:
        yield names
    finally:
        for directory, mode in opened:
            directory.chmod(mode & 0o7777)
        for name in created:
            subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)
