"""Users' storage for the working-directory tests: one home per user, seen by the
server (JupyterLab) under ``served/`` and, under ``exported/``, where remote kernels run
(a shared file system mounted at another path on the hosts). The test hosts share this
machine's file system but not its later mounts (``ip netns exec`` gives each a mount
namespace of its own), so ``exported`` is a link to ``served``: another path to the same
directories, as a mount would be. Made under /tmp (the kernels' accounts must traverse
it) and removed afterwards."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Homes:
    top: Path
    served: Path  # <top>/served/<user>: the server's view (JupyterLab's root)
    exported: Path  # <top>/exported/<user>: the same directories where kernels run

    def server_dir(self, user: str, *rel: str) -> Path:
        return self.served.joinpath(user, *rel)

    def kernel_dir(self, user: str, *rel: str) -> Path:
        return self.exported.joinpath(user, *rel)

    def working_dir_map(self) -> dict[str, str]:
        return {f"{self.served}/{{username}}": f"{self.exported}/{{username}}"}


@contextlib.contextmanager
def user_homes(owners: dict[str, str]) -> Iterator[Homes]:
    """``owners``: user -> OS account (or numeric uid) that owns the user's home (0700),
    with a ``sub/data.csv`` in it."""
    top = Path(tempfile.mkdtemp(prefix="ko-homes-", dir="/tmp"))
    top.chmod(0o711)
    served, exported = top / "served", top / "exported"
    served.mkdir(mode=0o711)
    served.chmod(0o711)
    exported.symlink_to(served)
    try:
        for user, owner in owners.items():
            uid = int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid
            gid = uid if owner.isdigit() else pwd.getpwnam(owner).pw_gid
            home = served / user
            (home / "sub").mkdir(parents=True)
            (home / "sub" / "data.csv").write_text(f"x,y\n1,{len(user)}\n2,3\n")
            for path in (home, home / "sub", home / "sub" / "data.csv"):
                os.chown(path, uid, gid)
            home.chmod(0o700)
        yield Homes(top, served, exported)
    finally:
        shutil.rmtree(top, ignore_errors=True)
