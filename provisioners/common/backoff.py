"""How long a shared watch waits before it tries its source again."""

from __future__ import annotations

import random

MAX_BACKOFF = 30.0


def backoff_delay(failures: int) -> float:
    """Seconds to wait after ``failures`` failures in a row: 0.5 s doubling to 30 s,
    with jitter so that replicas do not retry in step."""
    return float(min(MAX_BACKOFF, 0.5 * 2 ** (failures - 1)) * random.uniform(0.8, 1.2))
