"""How a kernel is interrupted: a message, a signal (which one), or not at all.

Kernels differ. ipykernel-based kernels and IJulia handle ``interrupt_request``;
IRkernel is interrupted by SIGINT only; Apache Toree by SIGUSR2 (the JVM does not
deliver SIGINT to its threads); xeus kernels *exit* on SIGINT and ignore
``interrupt_request`` (xeus #262, #272), so neither may be sent to them: such a kernel
gets an honest "cannot interrupt" instead of being killed.

The kernelspec says which, under our own metadata key, which ``kernelspec install``
writes::

    "metadata": {"kernel_orchestrator": {"interrupt_signal": "SIGUSR2"}}

``"interrupt_signal": "none"`` marks a kernel that no signal may reach. A kernelspec
without the key (Debian's ``xpython`` one, say) is recognised by its argv.
"""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Sequence
from typing import Any

from .errors import OrchestratorError

METADATA_KEY = "kernel_orchestrator"
NO_SIGNAL = "none"

# argv[0] names (or ``-m`` modules) of kernels that die of SIGINT: the xeus family.
_XEUS_PROGRAMS = frozenset({"xpython", "xpython_launcher", "xcpp", "xr", "xeus-octave", "xlua"})


class CannotInterruptError(OrchestratorError):
    """The kernel has no interrupt that would not end it."""


def _program_names(argv: Sequence[str]) -> set[str]:
    names = {os.path.basename(argv[0])} if argv else set()
    for flag, value in itertools.pairwise(argv):
        if flag == "-m":
            names.add(value)
    return names


def known_interrupt_signal(argv: Sequence[str]) -> str | None:
    """The interrupt signal a well-known kernel needs, judged by its argv (None:
    SIGINT, the protocol's default)."""
    if _program_names(argv) & _XEUS_PROGRAMS:
        return NO_SIGNAL
    if argv and os.path.basename(argv[0]) == "run.sh" and "toree" in argv[0].lower():
        return "SIGUSR2"
    return None


def parse_signal(value: str) -> int | None:
    """A signal name (``SIGUSR2``, ``USR2``) or number as a signal number; None for
    ``none``. Raises ValueError naming the value otherwise."""
    text = str(value).strip()
    if text.lower() == NO_SIGNAL:
        return None
    if text.isdigit():
        return int(signal.Signals(int(text)))
    name = text.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ValueError(
            f"interrupt signal {value!r} is not a signal name (such as SIGINT or SIGUSR2) or 'none'"
        ) from None


def interrupt_signal(kernel_spec: Any) -> int | None:
    """The signal a signal-mode interrupt sends this kernel; None when none may be."""
    metadata = getattr(kernel_spec, "metadata", None) or {}
    ours = metadata.get(METADATA_KEY) or {}
    value = ours.get("interrupt_signal") if isinstance(ours, dict) else None
    if value is None:
        value = known_interrupt_signal(list(getattr(kernel_spec, "argv", None) or []))
    if value is None:
        return int(signal.SIGINT)
    try:
        return parse_signal(value)
    except ValueError as e:
        raise OrchestratorError(
            f"kernelspec {getattr(kernel_spec, 'display_name', '')!r}: metadata"
            f" {METADATA_KEY}.interrupt_signal: {e}"
        ) from None


def cannot_interrupt(kernel_id: str, kernel_name: str) -> CannotInterruptError:
    return CannotInterruptError(
        f"kernel {kernel_id} ({kernel_name}) cannot be interrupted: it ends on an interrupt"
        " signal and ignores interrupt_request (xeus kernels do both). Restart it instead;"
        f" if this kernel can take a signal, set metadata {METADATA_KEY}.interrupt_signal"
        " in its kernelspec"
    )
