"""Scale scenario: one gateway (``kernel-orchestrator serve``) holding up to 1,000 kernels.

The kernels are the minimal kernel (``bench/minimal_kernel.py``, about 9 MB of its own
memory each, local processes): what is measured is the gateway, not the kernels.

* ``gateway`` -- kernels started through the REST API of one ``serve`` (SQLite store)
  in steps of N = 10, 100, 500 and 1,000 (quick: 10 and 50). At each N, once the
  start-ups have settled: the gateway's CPU over a window of idle, its open files and
  its RSS, per kernel (above the gateway with none). At N = 10 and at the largest N,
  100 WebSocket clients execute for a few seconds (10 per kernel on the 10, one each
  on 100 of the largest N): executes per second, largest N over 10. At the largest N:
  ``GET /api/kernels`` p50; then the gateway is restarted (SIGTERM: its kernels
  outlive it; a new ``serve`` on the same store) and timed until ``/readyz`` (every
  kernel re-attached, each answering ``kernel_info``), with the API probed every 20 ms
  meanwhile (``/healthz``) for stalls over 100 ms; then restarted once more with jupyter_client's
  own restarter (a timer per kernel, every 3 s), whose idle CPU in the same window is
  the side-by-side baseline of the restarter that waits to be told.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Any

from bench.harness import (
    Benchmark,
    Bounded,
    Context,
    Row,
    Target,
    error_row,
    kernel_processes,
    measurement,
    open_fds,
    percentile,
    progress,
    reap,
    rss_mb,
)
from bench.scenarios.gateway import (
    EXECUTE_TIMEOUT,
    LoadWorker,
    Server,
    connect_clients,
    cpu_seconds,
    quiesce,
)
from bench.scenarios.store import minimal_kernelspec, start_minimal_kernels

NAME = "scale"
DESCRIPTION = "one gateway with up to 1,000 idle kernels: CPU, fds, RSS, listing, restart, load"

IDLE_CPU_TARGET = 0.01  # % of a core per idle kernel (issue 33)
FDS_TARGET = 2.0
RSS_TARGET_MB = 0.5
LISTING_TARGET_MS = 50.0
RESTORE_TARGET_S = 10.0
STALL_MS = 100.0
THROUGHPUT_RATIO_TARGET = 0.9
CLIENTS = 100
SETTLE_SECONDS = 15.0  # past the restarters' stable-start time (10 s) after the last start
STOP_TIMEOUT = 60.0
STOCK_RESTARTER = (
    "--OrchestratorServerKernelManager.restarter_class="
    "jupyter_client.ioloop.AsyncIOLoopKernelRestarter"
)


def _params(quick: bool) -> dict[str, Any]:
    if quick:
        return {"steps": [10, 50], "window": 20.0, "listings": 30, "block_s": 3.0, "ramp_s": 1.0}
    return {
        "steps": [10, 100, 500, 1000],
        "window": 60.0,
        "listings": 100,
        "block_s": 5.0,
        "ramp_s": 2.0,
    }


async def _idle_cpu(server: Server, window: float, label: str) -> float:
    """The gateway's CPU over ``window`` seconds, in % of a core, after the start-ups
    settled (the restarters' stable-start time) and the process went quiet."""
    assert server.pid is not None
    await asyncio.sleep(SETTLE_SECONDS)
    await quiesce(lambda: [server.pid] if server.pid else [], label)
    cpu0, t0 = cpu_seconds([server.pid]), time.monotonic()
    await asyncio.sleep(window)
    return 100 * (cpu_seconds([server.pid]) - cpu0) / (time.monotonic() - t0)


async def _throughput(
    ctx: Context, server: Server, kernels: list[str], per_kernel: int, p: dict[str, Any]
) -> float:
    """Executes per second of CLIENTS WebSocket clients, ``per_kernel`` on each kernel."""
    label = f"scale-{len(kernels)}x{per_kernel}"
    workers: list[LoadWorker] = await connect_clients(
        ctx, label, server.base, server.token, kernels, 3, per_kernel=per_kernel
    )
    try:
        start = time.monotonic() + 0.3
        measure_from = start + p["ramp_s"]
        end = measure_from + p["block_s"]
        for worker in workers:
            await worker.send({"cmd": "go", "start": start, "from": measure_from, "end": end})
        results = await asyncio.gather(
            *(w.receive(p["ramp_s"] + p["block_s"] + EXECUTE_TIMEOUT + 30) for w in workers)
        )
    finally:
        await asyncio.gather(*(w.stop() for w in workers), return_exceptions=True)
    if errors := sum(r["errors"] for r in results):
        first = next(r["first_error"] for r in results if r["first_error"])
        raise RuntimeError(f"{label}: {errors} client(s) failed: {first}")
    return sum(r["completed"] for r in results) / float(p["block_s"])


async def _listing_ms(server: Server, n: int, requests: int) -> list[float]:
    samples = []
    for _ in Bounded("listing", requests, 300):
        t0 = time.perf_counter()
        code, listed = await server.request("GET", "/api/kernels", timeout=60)
        samples.append(time.perf_counter() - t0)
        if code != 200 or len(listed) != n:
            raise RuntimeError(f"GET /api/kernels answered {code} with {len(listed)} kernels")
    return samples


async def _stop_detaching(server: Server) -> None:
    """SIGTERM: the gateway detaches its kernels, which outlive it for the next one."""
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    await asyncio.to_thread(server.proc.wait, STOP_TIMEOUT)
    if server.http is not None:
        server.http.close()
        server.http = None


async def _restart(
    ctx: Context, previous: Server, label: str, extra: tuple[str, ...] = ()
) -> tuple[Server, float, list[float]]:
    """A new gateway on ``previous``'s store: seconds until ready (every kernel back),
    and the latencies of ``GET /api`` probed every 20 ms meanwhile."""
    await _stop_detaching(previous)
    server = Server("ours", label, ctx.root, extra)
    server.store_url, server.token = previous.store_url, previous.token
    latencies: list[float] = []
    ready = asyncio.Event()

    async def probe() -> None:
        from tornado.httpclient import AsyncHTTPClient, HTTPRequest

        http = AsyncHTTPClient(force_instance=True)
        try:
            while not ready.is_set():
                t0 = time.perf_counter()
                try:
                    request = HTTPRequest(server.base + "/healthz", request_timeout=30)
                    await http.fetch(request)
                except (ConnectionError, OSError):
                    await asyncio.sleep(0.02)  # not listening yet
                    continue
                latencies.append(time.perf_counter() - t0)
                await asyncio.sleep(0.02)
        finally:
            http.close()

    t0 = time.monotonic()
    prober = asyncio.create_task(probe())
    try:
        await server.start()  # returns at the first /readyz 200 (polled every 0.2 s)
    finally:
        ready.set()
        with contextlib.suppress(Exception):
            await prober
    return server, time.monotonic() - t0, latencies


async def _delete_all(server: Server, ids: list[str]) -> None:
    for batch in Bounded("delete kernels", (len(ids) + 19) // 20, 60 + len(ids)):
        await asyncio.gather(
            *(server.delete_kernel(k) for k in ids[batch * 20 : batch * 20 + 20]),
            return_exceptions=True,
        )


async def bench_gateway(ctx: Context) -> list[Row]:
    p = _params(ctx.quick)
    minimal_kernelspec(ctx)
    server = Server("ours", "scale", ctx.root)
    problems: list[str] = []
    ids: list[str] = []
    idle: dict[int, tuple[float, float, float]] = {}  # N -> (CPU %, fds, RSS MB) per kernel
    rates: dict[int, float] = {}
    listing: list[float] = []
    restore_s, latencies, timer_cpu = 0.0, [], 0.0
    try:
        await server.start()
        assert server.pid is not None
        fds0, rss0 = open_fds(server.pid), rss_mb(server.pid)
        for n in p["steps"]:
            ids += await start_minimal_kernels(server, n - len(ids))
            progress(f"scale: {n} kernels up; {p['window']:g} s of idle")
            cpu = await _idle_cpu(server, p["window"], f"scale {n}")
            fds, rss = open_fds(server.pid) - fds0, rss_mb(server.pid) - rss0
            idle[n] = (cpu / n, fds / n, rss / n)
            progress(
                f"scale: {n} idle kernels: gateway {cpu:.3f} % of a core, +{fds} fds, +{rss:.0f} MB"
            )
            if n == p["steps"][0] or n == p["steps"][-1]:
                kernels = ids[: min(n, CLIENTS)]
                rates[n] = await _throughput(ctx, server, kernels, CLIENTS // len(kernels), p)
                progress(f"scale: {CLIENTS} clients on {len(kernels)} kernels: {rates[n]:.0f}/s")
        n = len(ids)
        listing = await _listing_ms(server, n, p["listings"])
        progress(f"scale: GET /api/kernels p50 {percentile(sorted(listing), 50) * 1e3:.1f} ms")
        server, restore_s, latencies = await _restart(ctx, server, "scale-restored")
        progress(f"scale: restarted with {n} kernels: ready in {restore_s:.1f} s")
        server, _, _ = await _restart(ctx, server, "scale-timers", ("--", STOCK_RESTARTER))
        timer_cpu = await _idle_cpu(server, p["window"], "scale timers") / n
        progress(f"scale: jupyter_client's restarter: {timer_cpu * n:.3f} % of a core")
    except Exception as e:
        problems.append(f"{type(e).__name__}: {e}")
    finally:
        with contextlib.suppress(Exception):
            if server.proc is not None and server.proc.poll() is None:
                await _delete_all(server, ids)
        problems += await server.stop()
        if left := kernel_processes(str(ctx.root), "minimal_kernel"):
            problems.append(f"{len(left)} kernel processes left (killed)")
            reap([pid for pid, _ in left])
    return [
        *(error_row(NAME, "gateway", x) for x in problems),
        *_rows(p, idle, rates, listing, restore_s, latencies, timer_cpu),
    ]


def _rows(
    p: dict[str, Any],
    idle: dict[int, tuple[float, float, float]],
    rates: dict[int, float],
    listing: list[float],
    restore_s: float,
    latencies: list[float],
    timer_cpu: float,
) -> list[Row]:
    rows: list[Row] = []
    largest = max(idle) if idle else 0
    for n, (cpu, fds, rss) in idle.items():
        what = f"{n} idle kernels, gateway"
        cpu_row = measurement(
            NAME,
            f"{what}: CPU per kernel (% of a core)",
            "ours",
            [cpu],
            "count",
            target=Target.at_most(IDLE_CPU_TARGET),
        )
        if n == largest and timer_cpu:
            cpu_row.ratio = cpu / timer_cpu
            cpu_row.note = "ratio: to jupyter_client's restarter (a timer per kernel), below"
        rows += [
            cpu_row,
            measurement(
                NAME,
                f"{what}: fds per kernel",
                "ours",
                [fds],
                "count",
                target=Target.at_most(FDS_TARGET),
            ),
            measurement(
                NAME,
                f"{what}: RSS per kernel (MB)",
                "ours",
                [rss],
                "count",
                target=Target.at_most(RSS_TARGET_MB),
            ),
        ]
    if timer_cpu and largest:
        rows.append(
            measurement(
                NAME,
                f"{largest} idle kernels, gateway: CPU per kernel (% of a core)",
                "timers",
                [timer_cpu],
                "count",
                note="jupyter_client's restarter: a timer per kernel, every 3 s",
            )
        )
    if len(rates) == 2:
        small, big = sorted(rates)
        row = measurement(
            NAME,
            f"{CLIENTS} clients executing: on {min(big, CLIENTS)} of {big} kernels vs on {small}",
            "ours",
            [rates[big]],
            "count",
            target=Target.ratio_at_least(THROUGHPUT_RATIO_TARGET),
            note=f"executes/s: {rates[big]:.0f} vs {rates[small]:.0f} with {small} kernels held",
        )
        row.ratio = rates[big] / rates[small] if rates[small] else None
        rows.append(row.finish())
    if listing:
        rows.append(
            measurement(
                NAME,
                f"GET /api/kernels with {largest} live kernels",
                "ours",
                listing,
                "ms",
                target=Target.below(LISTING_TARGET_MS, "ms"),
            )
        )
    if restore_s:
        stalls = [x for x in latencies if x * 1e3 > STALL_MS]
        rows += [
            measurement(
                NAME,
                f"gateway restart with {largest} kernels: until all are served",
                "ours",
                [restore_s],
                "s",
                target=Target.below(RESTORE_TARGET_S, "s"),
                note="process start to /readyz (every kernel re-attached and answering)",
            ),
            measurement(
                NAME,
                f"gateway restart with {largest} kernels: API stalls over {STALL_MS:g} ms",
                "ours",
                [float(len(stalls))],
                "count",
                target=Target.at_most(0),
                note=(
                    f"GET /healthz every 20 ms while restoring: {len(latencies)} answered, slowest"
                    f" {max(latencies, default=0) * 1e3:.0f} ms"
                ),
            ),
        ]
    return rows


BENCHMARKS = [
    Benchmark(
        "gateway",
        "one serve with 10..1,000 idle minimal kernels: idle CPU, fds, RSS; listing; restart;"
        " 100 clients",
        bench_gateway,
    ),
]
