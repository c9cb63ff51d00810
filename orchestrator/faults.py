"""Crash points, for the fault tests: ``kill -9`` of this very process at a named step.

The tests prove that a process killed at any step of a kernel's start, restart or
shutdown leaves nothing that a new process plus ``gc`` cannot clean up or
re-attach. To kill it *exactly* there, the step calls :func:`checkpoint`; when
``$KERNEL_ORCHESTRATOR_CRASH_AT`` names that step, the process sends itself SIGKILL,
which no handler can intercept: what the test sees is what a real crash leaves.
Unset (always, outside those tests), a checkpoint costs one dictionary look-up.

Steps: ``before-launch``, ``after-launch`` (the kernel runs, its record is not saved),
``after-save``, ``mid-restart`` (the old kernel has stopped, the new one is not launched),
``before-shutdown``, ``after-kill`` (the kernel is stopped, its record not yet removed).
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "KERNEL_ORCHESTRATOR_CRASH_AT"
STEPS = (
    "before-launch",
    "after-launch",
    "after-save",
    "mid-restart",
    "before-shutdown",
    "after-kill",
)


def checkpoint(step: str) -> None:
    """Die here, as ``kill -9`` would, if the crash-point variable names ``step``."""
    if os.environ.get(CRASH_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
