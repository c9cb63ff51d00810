"""A kernelspec's argv and files, made right for where a remote kernel runs.

jupyter_client's ``format_kernel_cmd`` fills ``{connection_file}``, ``{resource_dir}``
and ``{prefix}`` with the *server's* paths and replaces an argv[0] of ``python`` with
the server's interpreter. None of that is right in a container, a pod, on an SSH
host or in a batch job, so remote provisioners build the kernel's argv here instead:

* ``{connection_file}``: where the connection file is on the kernel's side;
* ``{resource_dir}``: where the kernelspec's own files (all but ``kernel.json`` and
  the logos) are shipped on the kernel's side, by every remote back-end;
* ``{prefix}``: the kernel side's prefix, which only the operator knows
  (``kernel_prefix`` in the provisioner config); used without it, the start is
  refused with the setting to change;
* any other ``{name}`` is left as written, as jupyter_client does.

argv stays a list from end to end: no back-end joins it into a shell string.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from traitlets import HasTraits, Unicode

from orchestrator.errors import KernelStartError

#: The most a kernelspec's files may weigh in all: they travel with every start.
MAX_RESOURCE_BYTES = 512 * 1024  # (a Secret, base64 and all, holds at most 1 MiB)
_SKIPPED = ("kernel.json",)


def _is_logo(name: str) -> bool:
    return name.startswith("logo-") and name.rsplit(".", 1)[-1] in ("png", "svg")


@dataclass(frozen=True)
class ResourceFile:
    data: bytes
    executable: bool  # (a launcher script, say): shipped with its owner's x bit


def resource_files(resource_dir: str | None) -> dict[str, ResourceFile]:
    """The kernelspec's files to ship, by path relative to its directory: regular
    files only (links are not followed), read by descriptor, at most
    :data:`MAX_RESOURCE_BYTES` in all."""
    if not resource_dir or not os.path.isdir(resource_dir):
        return {}
    root = Path(resource_dir)
    files: dict[str, ResourceFile] = {}
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            if rel in _SKIPPED or _is_logo(rel) or name.startswith("."):
                continue
            try:
                fd = os.open(os.path.join(dirpath, name), os.O_RDONLY | os.O_NOFOLLOW)
            except OSError:
                continue  # a link, or unreadable
            try:
                mode = os.fstat(fd).st_mode
                if not stat.S_ISREG(mode):
                    continue
                with os.fdopen(os.dup(fd), "rb") as f:
                    data = f.read(MAX_RESOURCE_BYTES + 1 - total)
            finally:
                os.close(fd)
            total += len(data)
            if total > MAX_RESOURCE_BYTES:
                raise KernelStartError(
                    f"the kernelspec's files in {resource_dir} weigh more than"
                    f" {MAX_RESOURCE_BYTES // 1024} KiB, which every start of a remote kernel"
                    " would carry; put large files into the kernel's image or host instead"
                )
            files[rel] = ResourceFile(data, bool(mode & stat.S_IXUSR))
    return files


def kernel_argv(
    argv: list[str],
    *,
    connection_file: str | None,
    resource_dir: str | None,
    prefix: str,
    where: str,
) -> list[str]:
    """``argv`` with the kernel side's paths (see the module docstring); a path given
    as None leaves its placeholder for the kernel's side (a relay fills
    ``{connection_file}`` with its private one, a launcher ``{resource_dir}``)."""
    if not prefix and any("{prefix}" in a for a in argv):
        raise KernelStartError(
            f"the kernelspec's argv uses {{prefix}}, which has no meaning {where}: set"
            " kernel_prefix in the kernelspec's provisioner config to the kernel side's"
            " prefix, or write the path into argv"
        )
    out = []
    for arg in argv:
        if connection_file is not None:
            arg = arg.replace("{connection_file}", connection_file)
        if resource_dir is not None:
            arg = arg.replace("{resource_dir}", resource_dir)
        if prefix:
            arg = arg.replace("{prefix}", prefix)
        out.append(arg)
    return out


def shipped_files(files: dict[str, ResourceFile]) -> dict[str, list[object]]:
    """The files as a launcher's JSON request carries them: {path: [base64, exec]}."""
    import base64

    return {rel: [base64.b64encode(f.data).decode(), f.executable] for rel, f in files.items()}


class RemoteKernelCommand(HasTraits):
    """Mixed into remote provisioners: the kernelspec's argv and files for the
    kernel's side."""

    kernel_prefix = Unicode(
        "",
        config=True,
        help="What {prefix} in the kernelspec's argv means where the kernel runs (the"
        " image's or host's Python prefix, say); '' refuses a kernelspec that uses it.",
    )

    if False:  # for type checkers: provided by the provisioner
        kernel_spec: Any

    def spec_argv(self, extra: list[str]) -> list[str]:
        """The kernelspec's argv and any extra arguments, placeholders unfilled."""
        return list(self.kernel_spec.argv or []) + list(extra)

    def spec_files(self) -> dict[str, ResourceFile]:
        return resource_files(getattr(self.kernel_spec, "resource_dir", None))
