"""Core scenario: local ipykernels, kernel-orchestrator vs stock jupyter_client.

* ``start``     -- kernel start-to-ready: ``await km.start_kernel()`` then a client's
                   ``wait_for_ready()`` (a kernel_info reply on shell, iopub connected).
                   Stock ``jupyter_client.manager.AsyncKernelManager`` vs
                   ``orchestrator.AsyncKernelManager`` saving its record to SQLite.
                   Shutdown is not timed. Interleaved ABBA, one warm-up start each.
* ``roundtrip`` -- execute round trip of a trivial cell (``pass``): one kernel each,
                   ``execute_interactive`` = execute_request sent -> execute_reply and
                   the iopub idle status received. Interleaved per execute.
* ``reattach``  -- time for a fresh ``orchestrator.AsyncMultiKernelManager`` to
                   re-attach N running kernels: construction + ``restore_kernels()``,
                   which verifies every kernel with a kernel_info reply on its control
                   channel. The N kernels are started (untimed, in concurrent batches)
                   by ``orchestrator.AsyncKernelManager`` and detached. Each repetition
                   detaches everything again (``detach_all``) and restores anew.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import time
from collections.abc import Callable
from typing import Any

import zmq.asyncio
from jupyter_client.manager import AsyncKernelManager as StockAsyncKernelManager

import orchestrator
from bench.harness import (
    Benchmark,
    Bounded,
    Context,
    Row,
    Target,
    comparison,
    error_row,
    measurement,
    poll_until,
    progress,
    reap,
    run_interleaved,
)
from bench.restarts import restart_rows
from orchestrator.store import KernelStore, open_store

NAME = "core"
DESCRIPTION = "local ipykernels: start, execute round trip, re-attach (ours vs stock)"

KERNEL = "python3"
CODE = "pass"

# Targets (informational; see bench/README.md).
RATIO_TARGET = 1.05
REATTACH_TARGET_N = 50
REATTACH_TARGET_S = 2.0

# Per-operation time limits, seconds.
START_TIMEOUT = 60.0
READY_TIMEOUT = 60.0
SHUTDOWN_TIMEOUT = 30.0
EXECUTE_TIMEOUT = 10.0
RESTORE_TIMEOUT = 60.0
SHUTDOWN_ALL_TIMEOUT = 180.0

# Kernels started at once for the re-attach benchmark (the machine may have 2 cores).
START_BATCH = 8


def _params(quick: bool) -> dict[str, Any]:
    if quick:
        return {
            "start_reps": 3,
            "rt_reps": 50,
            "rt_warmup": 10,
            "sizes": (1, 10),
            "reattach_reps": 3,
        }
    return {
        "start_reps": 10,
        "rt_reps": 200,
        "rt_warmup": 20,
        "sizes": (1, 10, 50),
        "reattach_reps": 5,
    }


# ----------------------------------------------------------------------------- helpers


def _ignore(_msg: Any) -> None:
    pass


async def _shutdown(km: Any) -> None:
    """Shut a kernel down (politely, then by force); never raises."""
    try:
        if not km.has_kernel:
            return
        try:
            await asyncio.wait_for(km.shutdown_kernel(), SHUTDOWN_TIMEOUT)
        except Exception as e:
            progress(f"polite shutdown of {km.kernel_id} failed ({e!r}); forcing")
            await asyncio.wait_for(km.shutdown_kernel(now=True), SHUTDOWN_TIMEOUT)
    except Exception as e:
        progress(f"WARNING shutdown of kernel {getattr(km, 'kernel_id', '?')} failed: {e!r}")


async def _ready_client(km: Any) -> Any:
    kc = km.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=READY_TIMEOUT)
    except BaseException:
        kc.stop_channels()
        raise
    return kc


def _kernel_pid(km: Any) -> int | None:
    prov = getattr(km, "provisioner", None)
    return getattr(prov, "pid", None) if prov is not None else None


async def _diagnostics(km: Any) -> str:
    """The last lines the kernel printed (our provisioner keeps them in a log file)."""
    get = getattr(getattr(km, "provisioner", None), "startup_diagnostics", None)
    if get is None:
        return ""
    with contextlib.suppress(Exception):
        text = await get(lines=15)
        if text:
            return "; kernel output:\n" + text
    return ""


def _store_ids(store: KernelStore) -> Any:
    async def ids() -> set[str]:
        return {r.kernel_id for r in await store.list()}

    return ids()


# ------------------------------------------------------------------------ 1. start


async def _start_to_ready(make_km: Callable[[], Any]) -> float:
    km = make_km()
    kc = None
    try:
        t0 = time.perf_counter()
        await asyncio.wait_for(km.start_kernel(), START_TIMEOUT)
        kc = await _ready_client(km)
        return time.perf_counter() - t0
    finally:
        if kc is not None:
            kc.stop_channels()
        await _shutdown(km)


async def bench_start(ctx: Context) -> list[Row]:
    p = _params(ctx.quick)
    store = open_store(ctx.store_url("start.db"))
    try:
        variants = {
            "stock": lambda: _start_to_ready(lambda: StockAsyncKernelManager(kernel_name=KERNEL)),
            "ours": lambda: _start_to_ready(
                lambda: orchestrator.AsyncKernelManager(kernel_name=KERNEL, kernel_store=store)
            ),
        }
        progress(f"start-to-ready: 1 warm-up + {p['start_reps']} reps each, interleaved")
        samples = await run_interleaved(
            "start-to-ready",
            variants,
            p["start_reps"],
            warmup=1,
            max_seconds=60 + p["start_reps"] * 60,
            op_timeout=START_TIMEOUT + READY_TIMEOUT + 2 * SHUTDOWN_TIMEOUT,
            report_every=max(1, p["start_reps"] // 5),
        )
        left = await _store_ids(store)
    finally:
        store.close()
    note = f"{len(left)} record(s) left in the store after shutdown" if left else ""
    return comparison(
        NAME,
        "kernel start-to-ready",
        samples,
        "s",
        target=Target.ratio_at_most(RATIO_TARGET),
        note=note,
    )


# -------------------------------------------------------------------- 2. round trip


async def _execute(kc: Any) -> float:
    t0 = time.perf_counter()
    reply = await kc.execute_interactive(
        CODE, allow_stdin=False, output_hook=_ignore, timeout=EXECUTE_TIMEOUT
    )
    elapsed = time.perf_counter() - t0
    status = reply["content"].get("status")
    if status != "ok":
        raise RuntimeError(f"execute of {CODE!r} replied {status!r}")
    return elapsed


async def bench_roundtrip(ctx: Context) -> list[Row]:
    p = _params(ctx.quick)
    store = open_store(ctx.store_url("roundtrip.db"))
    kms: dict[str, Any] = {
        "stock": StockAsyncKernelManager(kernel_name=KERNEL),
        "ours": orchestrator.AsyncKernelManager(kernel_name=KERNEL, kernel_store=store),
    }
    kcs: dict[str, Any] = {}
    try:
        for name, km in kms.items():
            await asyncio.wait_for(km.start_kernel(), START_TIMEOUT)
            kcs[name] = await _ready_client(km)
        progress(
            f"round trip: {p['rt_warmup']} warm-up + {p['rt_reps']} executes each, interleaved"
        )
        samples = await run_interleaved(
            "round trip",
            {name: functools.partial(_execute, kc) for name, kc in kcs.items()},
            p["rt_reps"],
            warmup=p["rt_warmup"],
            max_seconds=300,
            op_timeout=EXECUTE_TIMEOUT + 5,
            report_every=max(1, p["rt_reps"] // 4),
        )
    finally:
        for kc in kcs.values():
            kc.stop_channels()
        await asyncio.gather(*(_shutdown(km) for km in kms.values()))
        store.close()
    return comparison(
        NAME,
        f"execute round trip ({CODE!r})",
        samples,
        "ms",
        target=Target.ratio_at_most(RATIO_TARGET),
    )


# ---------------------------------------------------------------------- 3. re-attach


async def _start_detached(
    store: KernelStore, n: int, zctx: Any, pids: list[int], retries: list[str]
) -> None:
    """Start ``n`` kernels with our manager, wait until each is ready, then detach.

    This is untimed setup, so a kernel that fails to start is shut down (record
    included) and started again, once; the failure is logged and noted in ``retries``.
    """

    async def attempt() -> None:
        km = orchestrator.AsyncKernelManager(kernel_name=KERNEL, kernel_store=store, context=zctx)
        try:
            await asyncio.wait_for(km.start_kernel(), START_TIMEOUT)
        finally:
            pid = _kernel_pid(km)
            if pid:
                pids.append(pid)
        try:
            kc = await _ready_client(km)
            kc.stop_channels()
        except Exception as e:
            diag = await _diagnostics(km)
            await _shutdown(km)
            raise RuntimeError(f"kernel {km.kernel_id} (pid {_kernel_pid(km)}): {e}{diag}") from e
        km.detach()

    async def one() -> None:
        for i in Bounded(
            "kernel start attempts", 2, 2 * (START_TIMEOUT + READY_TIMEOUT) + 10, on_timeout="raise"
        ):
            try:
                return await attempt()
            except Exception as e:
                if i == 1:
                    raise
                progress(f"WARNING kernel start failed, retrying once: {e}")
                retries.append(str(e).splitlines()[0])
        raise RuntimeError("unreachable")

    batches = math.ceil(n / START_BATCH)
    for b in Bounded(f"start {n} kernels", batches, 60 + n * 20, on_timeout="raise"):
        size = min(START_BATCH, n - b * START_BATCH)
        results = await asyncio.gather(*(one() for _ in range(size)), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise RuntimeError(f"{len(errors)} of {size} kernel starts failed: {errors[0]!r}")
        progress(f"  started {min(n, (b + 1) * START_BATCH)}/{n}")


def _verify(report: Any, expected: set[str]) -> None:
    got = set(report.reattached)
    if got != expected or report.removed or report.failed:
        raise RuntimeError(
            f"restore re-attached {len(got)} of {len(expected)} kernels"
            f" (removed {report.removed}, failed {report.failed})"
        )


async def _reattach_n(ctx: Context, n: int, reps: int) -> list[Row]:
    store = open_store(ctx.store_url(f"reattach-{n}.db"))
    zctx = zmq.asyncio.Context()
    pids: list[int] = []
    mkm: Any = None
    samples: list[float] = []
    retries: list[str] = []
    failed = False
    try:
        progress(f"re-attach N={n}: starting {n} kernels (untimed, batches of {START_BATCH})")
        await _start_detached(store, n, zctx, pids, retries)
        expected = await _store_ids(store)
        if len(expected) != n:
            raise RuntimeError(f"{len(expected)} records in the store for {n} kernels")
        await asyncio.sleep(1.0)  # let the fresh kernels go idle

        for _ in Bounded(f"re-attach N={n}", reps, 30 + reps * RESTORE_TIMEOUT):
            if mkm is not None:
                await mkm.detach_all()
                mkm = None
            t0 = time.perf_counter()
            mkm = orchestrator.AsyncMultiKernelManager(kernel_store=store)
            report = await asyncio.wait_for(mkm.restore_kernels(), RESTORE_TIMEOUT)
            samples.append(time.perf_counter() - t0)
            _verify(report, expected)
        progress(f"re-attach N={n}: " + ", ".join(f"{s:.3f}s" for s in samples))
    except BaseException:
        failed = True
        raise
    finally:
        try:
            await _teardown_reattach(store, mkm, pids, n)
        except Exception as e:
            if not failed:
                raise
            progress(f"WARNING re-attach N={n}: teardown after the failure: {e!r}")
        finally:
            zctx.destroy(linger=0)
            store.close()

    target = Target.below(REATTACH_TARGET_S, "s") if n == REATTACH_TARGET_N else None
    note = f"all {n} re-attached in each of {len(samples)} reps" + (
        f"; first rep {samples[0]:.3f} s" if samples else ""
    )
    if retries:
        note += f"; {len(retries)} kernel start(s) retried in the untimed setup: {retries[0]}"
    return [
        measurement(
            NAME, f"re-attach N={n}: total", "ours", samples, "s", target=target, note=note
        ),
        measurement(NAME, f"re-attach N={n}: per kernel", "ours", [s / n for s in samples], "ms"),
    ]


async def _teardown_reattach(store: KernelStore, mkm: Any, pids: list[int], n: int) -> None:
    """Shut down every kernel of this N, whatever state the benchmark left them in."""
    try:
        remaining = await _store_ids(store)
        if remaining and (mkm is None or set(mkm.list_kernel_ids()) != remaining):
            if mkm is not None:
                await mkm.detach_all()
            mkm = orchestrator.AsyncMultiKernelManager(kernel_store=store)
            await asyncio.wait_for(mkm.restore_kernels(), RESTORE_TIMEOUT)
        if mkm is not None:
            progress(f"re-attach N={n}: shutting down {len(mkm.list_kernel_ids())} kernels")
            await asyncio.wait_for(mkm.shutdown_all(), SHUTDOWN_ALL_TIMEOUT)
    except Exception as e:
        progress(f"WARNING re-attach N={n}: shutdown_all failed: {e!r}")

    from orchestrator.procinfo import is_running

    def all_gone() -> bool:
        return not any(is_running(pid) for pid in pids)

    if not await poll_until(all_gone, timeout=15, label=f"N={n} kernels exit"):
        alive = [pid for pid in pids if is_running(pid)]
        progress(
            f"WARNING re-attach N={n}: {len(alive)} kernel(s) still running after"
            " shutdown_all; killing them by pid"
        )
        reap(alive)
        raise RuntimeError(f"{len(alive)} kernel process(es) survived mkm.shutdown_all()")
    # The kernels were started by this process, so the exited ones are its zombie
    # children (a re-attached manager tracks them by pid, without a Popen): reap them.
    for pid in pids:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)  # noqa: ASYNC222 - WNOHANG never blocks
    left = await _store_ids(store)
    if left:
        raise RuntimeError(f"{len(left)} record(s) left in the store after shutdown_all()")


async def bench_reattach(ctx: Context) -> list[Row]:
    p = _params(ctx.quick)
    rows: list[Row] = []
    for n in p["sizes"]:
        try:
            rows += await _reattach_n(ctx, n, p["reattach_reps"])
        except Exception as e:
            progress(f"ERROR re-attach N={n}: {e!r}")
            rows.append(error_row(NAME, f"re-attach N={n}", repr(e)))
    return rows


async def bench_restart(ctx: Context) -> list[Row]:
    store = open_store(ctx.store_url("restart.db"))
    try:
        return await restart_rows(NAME, KERNEL, store, 3 if ctx.quick else 10, what="local")
    finally:
        store.close()


BENCHMARKS = [
    Benchmark("start", "kernel start-to-ready, ours vs stock", bench_start),
    Benchmark("roundtrip", "execute round trip of a trivial cell, ours vs stock", bench_roundtrip),
    Benchmark(
        "reattach", "re-attach N running kernels with AsyncMultiKernelManager", bench_reattach
    ),
    Benchmark("restart", "restart to first answer: a kept client vs a fresh one", bench_restart),
]
