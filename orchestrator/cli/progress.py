"""Progress for long waits: a spinner on a terminal, silence when piped."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import TextIO


@contextlib.asynccontextmanager
async def progress(
    message: str, stream: TextIO | None = None, detail: Callable[[], str] | None = None
) -> AsyncIterator[None]:
    """Show ``message`` with a spinner and elapsed time while the block runs, and what
    ``detail()`` says the wait is on (a batch job's queue state, say)."""
    out = stream or sys.stderr
    if not out.isatty():
        yield
        return
    started = time.monotonic()
    frames = "|/-\\"

    async def spin() -> None:
        i = 0
        while True:
            note = detail() if detail is not None else ""
            line = f"{frames[i % 4]} {message} ({time.monotonic() - started:.1f}s)"
            out.write(f"\r\033[K{line}" + (f": {note}" if note else ""))
            out.flush()
            i += 1
            await asyncio.sleep(0.1)

    task = asyncio.ensure_future(spin())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        out.write("\r\033[K")
        out.flush()
