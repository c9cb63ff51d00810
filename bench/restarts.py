"""Restart-to-first-answer with a kept client, next to a fresh client, for any kernelspec.

What a user of a kept client (JupyterLab's websocket, nbclient's ``KernelClient``)
waits for after a restart: ``await km.restart_kernel()`` on one kernel, then one
``execute_interactive("pass")`` answered (the reply *and* iopub's idle) -- on the
client kept since before the restart (``kept``), or on a client made after it, which
waits for ``wait_for_ready`` first (``fresh``, the baseline: what clients that
reconnect do). Interleaved ABBA on the same kernel. Target: kept <= 1.1x fresh, i.e.
following the kernel to its new process costs a kept client nothing extra.
"""

from __future__ import annotations

import time
from typing import Any

import orchestrator
from bench.harness import Row, Target, comparison, error_row, run_interleaved

TIMEOUT = 180.0
RATIO_TARGET = 1.1


async def restart_rows(
    scenario: str, kernelspec: str, store: Any, reps: int, *, what: str = ""
) -> list[Row]:
    """Rows for ``kernelspec``'s kernels: kept vs fresh client, restart to first answer."""
    bench = f"restart to first answer{f' ({what})' if what else ''}"
    km = orchestrator.AsyncKernelManager(kernel_name=kernelspec, kernel_store=store)
    kept: Any = None
    try:
        await km.start_kernel()
        kept = km.client()
        kept.start_channels()
        await kept.wait_for_ready(timeout=TIMEOUT)

        async def with_kept() -> float:
            t0 = time.perf_counter()
            await km.restart_kernel()
            reply = await kept.execute_interactive("pass", timeout=TIMEOUT)
            assert reply["content"]["status"] == "ok", reply["content"]
            return time.perf_counter() - t0

        async def with_fresh() -> float:
            t0 = time.perf_counter()
            await km.restart_kernel()
            kc = km.client()
            kc.start_channels()
            try:
                await kc.wait_for_ready(timeout=TIMEOUT)
                reply = await kc.execute_interactive("pass", timeout=TIMEOUT)
                assert reply["content"]["status"] == "ok", reply["content"]
                return time.perf_counter() - t0
            finally:
                kc.stop_channels()

        samples = await run_interleaved(
            bench,
            {"fresh client": with_fresh, "kept client": with_kept},
            reps,
            max_seconds=reps * 2 * TIMEOUT,
            op_timeout=TIMEOUT + 30,
            warmup=1,
        )
    except Exception as e:
        failed = [error_row(scenario, bench, f"{type(e).__name__}: {e}")]
        return failed + await _stop(scenario, bench, km, kept)
    problems = await _stop(scenario, bench, km, kept)
    return problems + comparison(
        scenario,
        bench,
        samples,
        "s",
        baseline="fresh client",
        target=Target.ratio_at_most(RATIO_TARGET),
        note="same kernel, interleaved; kept: the client made before the first restart",
    )


async def _stop(scenario: str, bench: str, km: Any, kept: Any) -> list[Row]:
    if kept is not None:
        kept.stop_channels()
    try:
        if km.has_kernel:
            await km.shutdown_kernel(now=True)
    except Exception as e:  # reported; the run's leak check follows
        return [error_row(scenario, bench, f"shutdown: {e}")]
    return []
