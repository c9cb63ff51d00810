"""Resource values (CPUs, memory, time-outs) from kernelspecs and clients, validated once.

A value that a back-end would read as "unlimited" or nonsense is refused with a
message naming it: zero, negative, NaN or infinite numbers, and sizes below what a
kernel can run in (Docker treats ``nano_cpus=0`` and ``mem_limit=0`` as no limit, so
``KERNEL_CPUS=1e-12`` would lift the operator's cap).
"""

from __future__ import annotations

import math
import re

from orchestrator.errors import OrchestratorError

MIN_CPUS = 0.01
MIN_MEMORY_BYTES = 6 * 1024**2  # Docker's own floor
MIN_PIDS = 16  # an ipykernel runs about ten threads

_DOCKER_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([bkmgBKMG]?)$")
_DOCKER_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_QUANTITY_UNITS = {
    None: 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60,
}  # fmt: skip


class ResourceError(OrchestratorError):
    """A resource value is malformed, or would turn into no limit at all."""


def positive_number(
    name: str, raw: str | float, *, minimum: float = 0.0, maximum: float = 0.0, unit: str = ""
) -> float:
    """``raw`` as a finite number > 0 (and >= ``minimum``, <= ``maximum`` when set)."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ResourceError(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or value <= 0:
        raise ResourceError(f"{name}={raw!r} must be a finite number above 0")
    if minimum and value < minimum:
        raise ResourceError(f"{name}={raw!r} is below the minimum of {minimum:g}{unit}")
    if maximum and value > maximum:
        raise ResourceError(f"{name}={raw!r} must be > 0 and <= {maximum:g}{unit}")
    return value


def docker_size(name: str, raw: str) -> int:
    """A Docker size such as ``512m`` or ``2g``, in bytes, at least Docker's floor."""
    m = _DOCKER_SIZE.fullmatch(raw or "")
    if not m:
        raise ResourceError(f"{name} {raw!r} is not a size like 512m or 2g")
    size = int(float(m[1]) * _DOCKER_UNITS[m[2].lower()])
    if size < MIN_MEMORY_BYTES:
        raise ResourceError(f"{name} {raw!r} is below the minimum of 6m")
    return size


def kubernetes_quantity(name: str, raw: str, *, memory: bool) -> float:
    """A Kubernetes quantity (``500m``, ``2``, ``1Gi``) as a number: CPUs, or bytes."""
    m = _QUANTITY.fullmatch(raw or "")
    if not m:
        raise ResourceError(f"{name} {raw!r} is not a Kubernetes quantity like 500m or 1Gi")
    value = float(m[1]) * _QUANTITY_UNITS[m[2]]
    if memory and value < MIN_MEMORY_BYTES:
        raise ResourceError(f"{name} {raw!r} is below the minimum of 6Mi")
    if not memory and value < MIN_CPUS:
        raise ResourceError(f"{name} {raw!r} is below the minimum of {MIN_CPUS:g} CPUs")
    return value
