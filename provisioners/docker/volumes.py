"""Per-user storage for Docker kernels: ``volumes`` entries with ``{username}``.

An entry is ``source:target[:ro|:rw]``; ``{username}`` in either part becomes the
gateway user's slug (one-to-one, see :func:`orchestrator.users.user_slug`):

* a **named volume** (``ko-home-{username}:/home/{username}``) is created on first use,
  labelled with its owner; a volume labelled for another user is never mounted;
* a **bind mount** (``/srv/homes/{username}:/home/{username}``) must lie under one of
  ``volume_roots`` (canonical paths; on a local engine the real path is checked too)
  and must exist: the engine would otherwise create it, as root, silently;
* in a multi-user gateway a *writable* entry whose source has no ``{username}`` would
  be every user's kernels' shared storage, so it is refused; read-only shared data
  (``datasets:/data:ro``) is fine.

What the map of :mod:`provisioners.common.workdir` gives as the working directory then
points into the mounted storage (``working_dir_map: {"/home/jovyan":
"/home/{username}"}``).
"""

from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import KernelStartError
from orchestrator.users import user_slug

from ..common.workdir import PLACEHOLDER, check_user_templates

LABEL_VOLUME_OWNER = "kernel-orchestrator.volume-owner"
_VOLUME_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
SETTING = "DockerProvisioner.volumes"


@dataclass(frozen=True)
class UserMount:
    """One mount of one kernel, placeholders filled."""

    source: str  # a volume name, or an absolute path on the engine host
    target: str
    read_only: bool = False
    owner: str = ""  # the user a named volume is labelled for ('' : shared)

    @property
    def is_bind(self) -> bool:
        return self.source.startswith("/")

    def to_docker(self) -> Any:
        from docker.types import Mount

        return Mount(
            target=self.target,
            source=self.source,
            type="bind" if self.is_bind else "volume",
            read_only=self.read_only,
        )


def _canonical(path: str, what: str) -> str:
    if not path.startswith("/") or "\0" in path or posixpath.normpath(path) != path:
        raise KernelStartError(f"{SETTING}: {what} {path!r} must be a canonical absolute path")
    return path


def _under_any(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def user_mounts(
    specs: list[str],
    username: str,
    *,
    multi_tenant: bool,
    volume_roots: list[str],
    local_engine: bool,
) -> list[UserMount]:
    """The mounts of ``username``'s kernel, or a refusal naming the entry and why."""
    slug = user_slug(username) if username else ""
    roots = [_canonical(r, "volume_roots entry") for r in volume_roots]
    entries = [_split(spec) for spec in specs]
    binds = [source for source, _, _ in entries if source.startswith("/")]
    check_user_templates(binds, SETTING, user_last=True)
    _check_volume_names([source for source, _, _ in entries if not source.startswith("/")])
    mounts: list[UserMount] = []
    for spec, (source, target, read_only) in zip(specs, entries, strict=True):
        personal = PLACEHOLDER in source
        if (personal or PLACEHOLDER in target) and not slug:
            raise KernelStartError(
                f"{SETTING} entry {spec!r} needs the kernel's user name (KERNEL_USERNAME)"
            )
        if multi_tenant and not personal and not read_only:
            raise KernelStartError(
                f"{SETTING} entry {spec!r} would be every user's kernels' shared, writable"
                f" storage: put {PLACEHOLDER} in its source, or mount it ':ro'"
            )
        source = source.replace(PLACEHOLDER, slug)
        target = _canonical(target.replace(PLACEHOLDER, slug), "target")
        if source.startswith("/"):
            _canonical(source, "bind source")
            if not _under_any(source, roots):
                raise KernelStartError(
                    f"{SETTING}: bind source {source} is under none of volume_roots"
                    f" ({', '.join(roots) or 'none set'})"
                )
            if local_engine:
                _check_local_bind(source, roots)
        elif not _VOLUME_NAME.match(source):
            raise KernelStartError(f"{SETTING}: {source!r} is not a valid volume name")
        mounts.append(UserMount(source, target, read_only, slug if personal else ""))
    return mounts


def _split(spec: str) -> tuple[str, str, bool]:
    parts = spec.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
        raise KernelStartError(f"{SETTING} entry {spec!r} must be source:target[:ro|:rw]")
    return parts[0], parts[1], len(parts) == 3 and parts[2] == "ro"


def _check_volume_names(names: list[str]) -> None:
    """Named-volume templates end with {username}, and no template's fixed part extends
    another's (``home-{username}`` and ``home-data-{username}``: user ``data-bob``
    would ask for bob's data volume; its owner label would refuse it, but only after
    whoever came first had taken the name)."""
    prefixes = []
    for name in names:
        if PLACEHOLDER in name:
            if not name.endswith(PLACEHOLDER) or name.count(PLACEHOLDER) > 1:
                raise KernelStartError(
                    f"{SETTING}: volume name {name!r} must end with {PLACEHOLDER}"
                )
            prefixes.append(name[: -len(PLACEHOLDER)])
    for prefix in prefixes:
        for name in names:
            fixed = name[: -len(PLACEHOLDER)] if name.endswith(PLACEHOLDER) else name
            if fixed != prefix and fixed.startswith(prefix):
                raise KernelStartError(
                    f"{SETTING}: volume names {prefix + PLACEHOLDER!r} and {name!r} overlap"
                    " (one user's name could spell the other's volume)"
                )


def _check_local_bind(source: str, roots: list[str]) -> None:
    """On this machine's engine: the source exists, and its real path (operator
    symlinks resolved) is still under a root's real path."""
    if os.path.islink(source):
        raise KernelStartError(
            f"{SETTING}: bind source {source} is a symbolic link (the engine would follow it)"
        )
    real = os.path.realpath(source)
    if not os.path.isdir(real):
        raise KernelStartError(
            f"{SETTING}: bind source {source} does not exist (create the user's directory,"
            " owned by the kernel's uid; the engine would create it as root)"
        )
    if not _under_any(real, [os.path.realpath(r) for r in roots]):
        raise KernelStartError(
            f"{SETTING}: bind source {source} resolves to {real}, outside volume_roots"
        )


def ensure_named_volumes(client: Any, mounts: list[UserMount]) -> None:
    """Create each personal named volume on first use, labelled with its owner; refuse
    one that exists for another user (runs in the engine's executor thread)."""
    import docker.errors

    for mount in mounts:
        if mount.is_bind or not mount.owner:
            continue
        try:
            volume = client.volumes.get(mount.source)
        except docker.errors.NotFound:
            # (no kernel's label: the volume outlives every kernel, and gc leaves it)
            client.volumes.create(name=mount.source, labels={LABEL_VOLUME_OWNER: mount.owner})
            continue
        owner = (volume.attrs.get("Labels") or {}).get(LABEL_VOLUME_OWNER)
        if owner != mount.owner:
            raise KernelStartError(
                f"volume {mount.source!r} exists but belongs to"
                f" {owner or 'no kernel-orchestrator user'!r}, not {mount.owner!r}: it is"
                " not mounted (remove or relabel it)"
            )
