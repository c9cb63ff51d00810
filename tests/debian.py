"""Install the Debian packages a test's real components need, without starting them.

Tests start their own PostgreSQL, nginx, sshd or Slurm daemons in private
directories and namespaces; a package's post-install script must not start the
system's copy. So the install runs under a ``policy-rc.d`` that refuses every
service start (unless the machine has one already).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

_APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "NEEDRESTART_MODE": "l"}


class PackageError(RuntimeError):
    """A needed package could not be installed."""


def present(path: str) -> bool:
    """Whether ``path`` is an executable file, or (a bare name) a command on $PATH."""
    if "/" in path:
        return os.access(path, os.X_OK)
    return shutil.which(path) is not None


def ensure(packages: Mapping[str, str]) -> None:
    """Install, with apt-get, each package whose marker (a path or command) is missing.

    ``packages`` maps marker -> package. Nothing happens when every marker is there.
    """
    missing = sorted({pkg for marker, pkg in packages.items() if not present(marker)})
    if not missing:
        return
    if os.geteuid() != 0:
        raise PackageError(f"need root to install {missing}")
    env = {**os.environ, **_APT_ENV}
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\n# kernel-orchestrator tests: start no service\nexit 101\n")
        policy.chmod(0o755)
    try:
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing]
        if subprocess.run(cmd, env=env, capture_output=True, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise PackageError(f"apt-get install {missing} failed: {done.stderr[-2000:]}")
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
