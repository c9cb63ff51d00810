"""The notebook's directory as the remote kernel's working directory.

Jupyter Server sends ``KERNEL_WORKING_DIR`` (the notebook's folder, as a path on the
*server*) with every start. A remote kernel sees other paths: a container mounts the
user's storage somewhere else, an HPC login node has the same shared file system, an
SSH host may mount it elsewhere. So an operator writes ``working_dir_map``, server
prefix -> kernel prefix (``{username}``, the user's slug, allowed on both sides)::

    {"/home/jovyan": "/home/{username}"}       # a per-user server's home -> the user's
    {"/home/{username}": "/home/{username}"}   # one shared file system: identity
    {"/srv/homes/{username}": "/export/homes/{username}"}  # mounted elsewhere there

and the kernel side of each entry is an *allowed root*: the kernel starts in the mapped
directory, which must be under a root. What is refused, with the setting named:

* a path that is not absolute and canonical (``..``, ``.``, ``//``, NUL);
* a path under no server prefix of the map (the notebook is elsewhere);
* on the kernel's side (SSH hosts, Slurm nodes: :func:`enter_working_dir` in
  :mod:`.kernelside`): a directory that does not exist, or any symbolic link below the
  root (it could lead out of the root, into another user's files). The directory is
  opened component by component, by descriptor, and the kernel is started in the
  directory that was opened, not in whatever the path names a moment later.

Without a map ``KERNEL_WORKING_DIR`` is ignored, as a hint, with one log line: the
kernel starts in the kernelspec's ``working_dir`` (or the back-end's default). The
directory mapped at the start is kept in the provisioner's state, so restarts,
re-attach and take-over by another replica start the kernel in the same place.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from traitlets import Dict, HasTraits

from orchestrator.errors import KernelStartError
from orchestrator.users import user_slug

VARIABLE = "KERNEL_WORKING_DIR"
SETTING = "working_dir_map"
PLACEHOLDER = "{username}"


@dataclass(frozen=True)
class WorkingDir:
    """Where the kernel starts (``path``) and the allowed root it must stay under."""

    path: str
    root: str

    def to_json(self) -> dict[str, str]:
        return {"path": self.path, "root": self.root}

    @classmethod
    def from_json(cls, data: Any) -> WorkingDir | None:
        if isinstance(data, dict) and data.get("path") and data.get("root"):
            return cls(str(data["path"]), str(data["root"]))
        return None


def canonical(path: str, what: str) -> str:
    """``path`` if it is absolute and canonical (what a check can trust), else a refusal."""
    if (
        not path.startswith("/")
        or "\0" in path
        or posixpath.normpath(path) != (path.rstrip("/") or "/")
        or path.startswith("//")
    ):
        raise KernelStartError(
            f"{what} {path!r} must be an absolute path without '..', '.' or '//'"
        )
    return posixpath.normpath(path)


def _under(path: str, prefix: str) -> str | None:
    """The part of ``path`` below ``prefix`` ('' for the prefix itself), or None."""
    if prefix == "/":
        return path.lstrip("/")
    if path == prefix:
        return ""
    if path.startswith(prefix + "/"):
        return path[len(prefix) + 1 :]
    return None


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p]


def check_user_templates(templates: list[str], setting: str, *, user_last: bool = False) -> None:
    """Path templates (``{username}`` for the user's slug) that keep users apart: the
    placeholder is a whole path component (``/srv/{username}``, never
    ``/srv/{username}-x``, which user ``bob-x`` would share with ``bob``); with
    ``user_last`` it is the last one (the user's own directory itself, nothing below it
    that the user could swap for a link); and no template's user component falls on
    another entry's fixed path: with ``/srv/{username}`` and ``/srv/home/{username}``,
    a user named ``home`` would get everyone's homes. A refusal names the setting."""
    fixed_paths = []
    prefixes = []
    for template in templates:
        parts = _parts(template)
        if PLACEHOLDER not in template:
            fixed_paths.append((template, parts))
            continue
        where = [i for i, p in enumerate(parts) if PLACEHOLDER in p]
        if any(parts[i] != PLACEHOLDER for i in where):
            raise KernelStartError(
                f"{setting}: in {template!r}, {PLACEHOLDER} must be a whole path component"
                " (a user's name must not be able to spell another user's path)"
            )
        if user_last and where[-1] != len(parts) - 1:
            raise KernelStartError(
                f"{setting}: in {template!r}, {PLACEHOLDER} must be the last component (the"
                " user's own directory is what is mounted)"
            )
        prefixes.append((template, parts[: where[0]]))
        fixed_paths.append((template, parts[: where[0]]))
    for template, prefix in prefixes:
        for other, parts in fixed_paths:
            if other != template and len(parts) > len(prefix) and parts[: len(prefix)] == prefix:
                raise KernelStartError(
                    f"{setting}: {template!r} and {other!r} overlap: a user named"
                    f" {parts[len(prefix)]!r} would get {'/' + '/'.join(parts[: len(prefix) + 1])}"
                )


def map_working_dir(requested: str, mapping: dict[str, str], username: str) -> WorkingDir:
    """The kernel-side directory for the server-side ``requested`` (longest prefix wins)."""
    path = canonical(requested, VARIABLE)
    check_user_templates(list(mapping), f"{SETTING} (server side)")
    check_user_templates(list(mapping.values()), f"{SETTING} (kernel side)")
    slug = user_slug(username) if username else ""
    best: tuple[str, str] | None = None
    for server_template, kernel in mapping.items():
        if PLACEHOLDER in server_template + kernel and not slug:
            raise KernelStartError(
                f"{SETTING} maps {server_template!r} to {kernel!r}, which needs the kernel's"
                " user name (KERNEL_USERNAME)"
            )
        server = canonical(server_template.replace(PLACEHOLDER, slug), f"{SETTING} entry")
        root = canonical(kernel.replace(PLACEHOLDER, slug), f"{SETTING}[{server_template!r}]")
        if _under(path, server) is not None and (best is None or len(server) > len(best[0])):
            best = (server, root)
    if best is None:
        raise KernelStartError(
            f"{VARIABLE} {requested!r} is under none of the directories this kernelspec"
            f" maps ({SETTING}: {', '.join(mapping) or 'none'}); the kernel would start"
            " elsewhere, so it is not started"
        )
    server, root = best
    rest = _under(path, server)
    assert rest is not None
    return WorkingDir(posixpath.join(root, rest) if rest else root, root)


class WorkingDirMapping(HasTraits):
    """Mixed into provisioners: ``working_dir_map`` and the mapped directory's state."""

    if False:  # for type checkers: provided by the provisioner
        log: Any
        kernel_id: str

    working_dir_map = Dict(
        config=True,
        help="Server path prefix -> kernel path prefix ({username} allowed on both) for"
        " KERNEL_WORKING_DIR, the notebook's directory Jupyter Server sends: the kernel"
        " starts in the mapped directory, which must be under a kernel-side prefix."
        " Empty: KERNEL_WORKING_DIR is ignored.",
    )

    mapped_working_dir: WorkingDir | None = None

    def choose_working_dir(self, client_env: dict[str, str]) -> WorkingDir | None:
        """Map this start's ``KERNEL_WORKING_DIR`` (a restart without one keeps the
        directory of the first start)."""
        requested = client_env.get(VARIABLE, "")
        if not requested:
            return self.mapped_working_dir
        if not self.working_dir_map:
            self.log.info(
                "kernel %s: %s=%s ignored (the kernelspec sets no %s)",
                self.kernel_id,
                VARIABLE,
                requested,
                SETTING,
            )
            return self.mapped_working_dir
        mapping = {str(k): str(v) for k, v in self.working_dir_map.items()}
        self.mapped_working_dir = map_working_dir(
            requested, mapping, client_env.get("KERNEL_USERNAME", "")
        )
        return self.mapped_working_dir

    def working_dir_request(self) -> dict[str, str] | None:
        """The mapped directory as the SSH launcher and the Slurm supervisor take it."""
        return self.mapped_working_dir.to_json() if self.mapped_working_dir else None

    async def get_provisioner_info(self) -> dict[str, Any]:
        info: dict[str, Any] = await super().get_provisioner_info()  # type: ignore[misc]
        if self.mapped_working_dir is not None:
            info["mapped_working_dir"] = self.mapped_working_dir.to_json()
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)  # type: ignore[misc]
        self.mapped_working_dir = WorkingDir.from_json(provisioner_info.get("mapped_working_dir"))
