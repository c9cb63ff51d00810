"""A kernel's container settings: the kernelspec's config plus allowed per-start overrides.

Operators write the config; clients may override only what ``allowed_overrides``
names, through ``KERNEL_*`` variables of the start request, and every value is
validated (image against the allow-list, sizes and paths by format, caps enforced).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import OrchestratorError

# Client variable -> setting it overrides.
OVERRIDE_VARIABLES = {
    "KERNEL_IMAGE": "image",
    "KERNEL_CPUS": "cpus",
    "KERNEL_MEMORY": "memory",
    "KERNEL_WORKING_DIR": "working_dir",
    "KERNEL_STARTUP_TIMEOUT": "startup_timeout",
}

_MEMORY = re.compile(r"^[0-9]+(?:\.[0-9]+)?[bkmgBKMG]?$")
_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class SettingsError(OrchestratorError):
    """A container setting (from the kernelspec or the client) is not acceptable."""


def memory_bytes(text: str) -> int:
    if not _MEMORY.match(text):
        raise SettingsError(f"memory {text!r} is not a size like 512m or 2g")
    unit = text[-1].lower() if text[-1].isalpha() else "b"
    number = text[:-1] if text[-1].isalpha() else text
    return int(float(number) * _UNITS[unit])


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
            raise SettingsError(
                f"{variable} is not allowed for this kernelspec"
                f" (overridable: {', '.join(allowed) or 'nothing'})"
            )
        raw = client_env[variable]
        if setting == "cpus":
            try:
                cpus = float(raw)
            except ValueError:
                raise SettingsError(f"{variable}={raw!r} is not a number") from None
            if not 0 < cpus <= (max_cpus or cpus):
                raise SettingsError(f"{variable}={raw!r} must be > 0 and <= {max_cpus:g}")
            values["cpus"] = cpus
        elif setting == "memory":
            wanted = memory_bytes(raw)
            if max_memory and wanted > memory_bytes(max_memory):
                raise SettingsError(f"{variable}={raw!r} is above the limit {max_memory}")
            values["memory"] = raw
        elif setting == "startup_timeout":
            try:
                timeout = float(raw)
            except ValueError:
                raise SettingsError(f"{variable}={raw!r} is not a number") from None
            if not 0 < timeout <= max_startup_timeout:
                raise SettingsError(
                    f"{variable}={raw!r} must be > 0 and <= {max_startup_timeout:g} seconds"
                )
            values["startup_timeout"] = timeout
        elif setting == "working_dir":
            if not raw.startswith("/") or "\0" in raw or "/../" in f"{raw}/":
                raise SettingsError(f"{variable}={raw!r} must be an absolute path without '..'")
            values["working_dir"] = raw
        else:
            values[setting] = raw
    return ContainerSettings(**{**base.__dict__, **values})
