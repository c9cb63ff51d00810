"""Slurm scenario: the Slurm provisioner on a real cluster built in network namespaces.

The cluster is ``tests.slurmnet.SlurmNet`` (slurmctld and sshd on a login host, slurmd
on two compute nodes, one munged), started per benchmark and stopped in ``finally``.
All traffic stays on this machine: the veth to the login host, the bridge behind it.

* ``start``      -- start-to-ready (``start_kernel`` until a kernel_info reply) of a
                    kernel in a batch job on an idle cluster, next to the SSH
                    provisioner starting a kernel on the login host itself, interleaved
                    (ABBA). Target: Slurm <= 1.5x SSH.
* ``concurrent`` -- 20 Slurm kernels started at once: all ready, wall time, and how many
                    ``squeue`` runs served them (one per login host per interval).
* ``certificate`` -- start to ready of a Slurm kernel whose login connection uses a
                    certificate minted per connection vs a stored key, each mode's
                    connection kept open by a running kernel (target ratio <= 1.05).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import orchestrator
from bench.harness import (
    Benchmark,
    Context,
    Row,
    Target,
    comparison,
    concurrent_start_rows,
    error_row,
    measurement,
    progress,
    run_interleaved,
    start_all_at_once,
)
from bench.restarts import restart_rows
from bench.scenarios.core import _ready_client, _shutdown
from orchestrator.store import open_store

NAME = "slurm"
DESCRIPTION = (
    "Slurm provisioner on a real cluster (namespaces): start-to-ready vs SSH on the login"
    " host, 20 concurrent starts"
)
CONCURRENT_N = 20
START_TIMEOUT = 120.0


def _skip_reason() -> str:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux (network namespaces)"
    return ""


@contextlib.asynccontextmanager
async def _cluster(problems: list[str]) -> AsyncIterator[Any]:
    from tests.slurmnet import SlurmNet

    net = await asyncio.to_thread(SlurmNet().start)
    progress(f"slurm: cluster up in {net.timings['start']:.1f}s")
    try:
        yield net
    finally:
        await asyncio.to_thread(net.stop)
        if left := net.leftovers():
            problems.append(f"cluster left: {left}")


def _kernelspecs(ctx: Context, net: Any) -> None:
    from tests.test_slurm import slurm_config

    slurm = slurm_config(net, ctx.path("slurm-kernels"), queue_interval=1.0)
    ssh = {k: slurm[k] for k in ("hosts", "identity_file", "known_hosts", "python")}
    ssh["remote_dir"] = str(ctx.path("ssh-kernels"))
    from tests.conftest import write_kernelspec

    data_dir = str(ctx.root / "data")
    write_kernelspec(data_dir, "bench-slurm", "slurm-provisioner", slurm)
    write_kernelspec(data_dir, "bench-login-ssh", "ssh-provisioner", ssh)
    # The same, logging in with a certificate minted per connection (no stored key).
    certified = {**slurm, "identity_file": "", "certificate_authority": str(net.user_ca)}
    write_kernelspec(data_dir, "bench-slurm-cert", "slurm-provisioner", certified)


async def _start_to_ready(store: Any, kernelspec: str) -> float:
    km = orchestrator.AsyncKernelManager(kernel_name=kernelspec, kernel_store=store)
    t0 = time.perf_counter()
    try:
        await asyncio.wait_for(km.start_kernel(), START_TIMEOUT)
        (await _ready_client(km)).stop_channels()
        return time.perf_counter() - t0
    finally:
        await _shutdown(km)


async def bench_start(ctx: Context) -> list[Row]:
    bench = "start to ready"
    if reason := _skip_reason():
        return [error_row(NAME, bench, reason)]
    problems: list[str] = []
    reps = 3 if ctx.quick else 6
    async with _cluster(problems) as net:
        _kernelspecs(ctx, net)
        store = open_store(ctx.store_url("slurm-start.db"))
        try:
            samples = await run_interleaved(
                "slurm start",
                {
                    "ssh on the login host": lambda: _start_to_ready(store, "bench-login-ssh"),
                    "slurm job": lambda: _start_to_ready(store, "bench-slurm"),
                },
                reps,
                max_seconds=600,
                op_timeout=START_TIMEOUT + 60,
                warmup=1,
            )
        finally:
            store.close()
    rows = comparison(
        NAME,
        bench,
        samples,
        "s",
        baseline="ssh on the login host",
        target=Target.ratio_at_most(1.5),
        note="idle cluster; the Slurm time includes sbatch, scheduling, the job's start",
    )
    return rows + [error_row(NAME, bench, p) for p in problems]


async def bench_certificate(ctx: Context) -> list[Row]:
    """Start to ready of a Slurm kernel whose login host connection logs in with a
    certificate minted for it vs with a stored key; each mode's connection is kept open
    by a kernel left running, as in service (one connection per host and account)."""
    bench = "start to ready: certificate vs stored key"
    if reason := _skip_reason():
        return [error_row(NAME, bench, reason)]
    problems: list[str] = []
    reps = 3 if ctx.quick else 6
    anchors: list[Any] = []
    async with _cluster(problems) as net:
        _kernelspecs(ctx, net)
        store = open_store(ctx.store_url("slurm-certificate.db"))
        try:
            for kernelspec in ("bench-slurm", "bench-slurm-cert"):
                km = orchestrator.AsyncKernelManager(kernel_name=kernelspec, kernel_store=store)
                anchors.append(km)
                await asyncio.wait_for(km.start_kernel(), START_TIMEOUT)
            samples = await run_interleaved(
                "slurm certificate",
                {
                    "stored key": lambda: _start_to_ready(store, "bench-slurm"),
                    "certificate": lambda: _start_to_ready(store, "bench-slurm-cert"),
                },
                reps,
                max_seconds=600,
                op_timeout=START_TIMEOUT + 60,
                warmup=1,
            )
        finally:
            await asyncio.gather(*(_shutdown(km) for km in anchors), return_exceptions=True)
            store.close()
    rows = comparison(
        NAME,
        bench,
        samples,
        "s",
        baseline="stored key",
        target=Target.ratio_at_most(1.05),
        note="connection kept by a running kernel of each mode",
    )
    return rows + [error_row(NAME, bench, p) for p in problems]


async def bench_concurrent(ctx: Context) -> list[Row]:
    n = CONCURRENT_N
    bench = f"{n} concurrent slurm starts"
    if reason := _skip_reason():
        return [error_row(NAME, bench, reason)]
    problems: list[str] = []
    kms: list[Any] = []
    wall, ready, errors = 0.0, [], []
    squeues = -1
    async with _cluster(problems) as net:
        _kernelspecs(ctx, net)
        store = open_store(ctx.store_url("slurm-concurrent.db"))

        async def one(t0: float) -> float:
            km = orchestrator.AsyncKernelManager(kernel_name="bench-slurm", kernel_store=store)
            kms.append(km)
            await asyncio.wait_for(km.start_kernel(), START_TIMEOUT)
            (await _ready_client(km)).stop_channels()
            return time.perf_counter() - t0

        try:
            wall, ready, errors = await start_all_at_once(
                "kernels as Slurm jobs", n, one, START_TIMEOUT + 60
            )
            started = [km for km in kms if km.has_kernel]
            if started:
                squeues = (await started[0].provisioner._queue()).requests
        finally:
            await asyncio.gather(*(_shutdown(km) for km in kms), return_exceptions=True)
            store.close()
            deadline = time.monotonic() + 30
            while (live := net.live_jobs()) and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            if live:
                problems.append(f"jobs left after shutdown: {[j['id'] for j in live]}")
    note = f"{len(errors)} failed" + (f": {str(errors[0])[:200]}" if errors else "")
    rows = [
        *concurrent_start_rows(NAME, bench, "slurm", n, wall, ready, note=note),
        measurement(
            NAME,
            f"{bench}: squeue runs",
            "slurm",
            [float(squeues)],
            "count",
            note="squeue runs on the login host for all 20 starts and polls (one shared"
            " snapshot per interval, not one per kernel)",
        ),
    ]
    return rows + [error_row(NAME, bench, p) for p in problems]


async def bench_restart(ctx: Context) -> list[Row]:
    bench = "restart to first answer (slurm)"
    if reason := _skip_reason():
        return [error_row(NAME, bench, reason)]
    problems: list[str] = []
    async with _cluster(problems) as net:
        _kernelspecs(ctx, net)
        store = open_store(ctx.store_url("slurm-restart.db"))
        try:
            rows = await restart_rows(
                NAME, "bench-slurm", store, 3 if ctx.quick else 6, what="slurm job"
            )
        finally:
            store.close()
    return rows + [error_row(NAME, bench, p) for p in problems]


BENCHMARKS = [
    Benchmark("start", "start-to-ready: Slurm job vs SSH on the login host", bench_start),
    Benchmark("concurrent", f"{CONCURRENT_N} Slurm kernels started at once", bench_concurrent),
    Benchmark("restart", "restart to first answer: a kept client vs a fresh one", bench_restart),
    Benchmark(
        "certificate",
        "start to ready with a certificate minted per connection vs a stored key",
        bench_certificate,
    ),
]
