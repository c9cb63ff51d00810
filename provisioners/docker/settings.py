"""A kernel's container settings: the kernelspec's config plus allowed per-start overrides.

Operators write the config; clients may override only what ``allowed_overrides``
names, through ``KERNEL_*`` variables of the start request, and every value is
validated (image against the allow-list, sizes and paths by format, caps enforced).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import OrchestratorError

from ..common.resources import MIN_CPUS, docker_size, positive_number

# Client variable -> setting it overrides.
#
# Jupyter Server's gateway client sends KERNEL_WORKING_DIR with every start from a
# notebook (the notebook's folder on the Jupyter Server host, which rarely exists in a
# container): a hint, so it is ignored unless the kernelspec lets clients choose the
# working directory. Every other variable a kernelspec does not allow is refused.
HINTS = {"KERNEL_WORKING_DIR"}
OVERRIDE_VARIABLES = {
    "KERNEL_IMAGE": "image",
    "KERNEL_CPUS": "cpus",
    "KERNEL_MEMORY": "memory",
    "KERNEL_WORKING_DIR": "working_dir",
    "KERNEL_STARTUP_TIMEOUT": "startup_timeout",
}


class SettingsError(OrchestratorError):
    """A container setting (from the kernelspec or the client) is not acceptable."""


def memory_bytes(text: str, name: str = "memory") -> int:
    return docker_size(name, text)


@dataclass
class ContainerSettings:
    """What one kernel container is created with."""

    image: str
    cpus: float = 0.0
    memory: str = ""
    working_dir: str = ""
    startup_timeout: float = 60.0
    environment: dict[str, str] = field(default_factory=dict)


def apply_overrides(
    base: ContainerSettings,
    client_env: dict[str, str],
    *,
    allowed: list[str],
    max_cpus: float,
    max_memory: str,
    max_startup_timeout: float,
) -> ContainerSettings:
    """``base`` with the client's allowed overrides applied and validated."""
    values: dict[str, Any] = {}
    for variable, setting in OVERRIDE_VARIABLES.items():
        if variable not in client_env:
            continue
        if setting not in allowed:
            if variable in HINTS:
                continue
            raise SettingsError(
                f"{variable} is not allowed for this kernelspec"
                f" (overridable: {', '.join(allowed) or 'nothing'})"
            )
        raw = client_env[variable]
        if setting == "cpus":
            values["cpus"] = positive_number(variable, raw, minimum=MIN_CPUS, maximum=max_cpus)
        elif setting == "memory":
            wanted = memory_bytes(raw, variable)
            if max_memory and wanted > memory_bytes(max_memory):
                raise SettingsError(f"{variable}={raw!r} is above the limit {max_memory}")
            values["memory"] = raw
        elif setting == "startup_timeout":
            values["startup_timeout"] = positive_number(
                variable, raw, maximum=max_startup_timeout, unit=" seconds"
            )
        elif setting == "working_dir":
            if not raw.startswith("/") or "\0" in raw or "/../" in f"{raw}/":
                raise SettingsError(f"{variable}={raw!r} must be an absolute path without '..'")
            values["working_dir"] = raw
        else:
            values[setting] = raw
    return ContainerSettings(**{**base.__dict__, **values})
