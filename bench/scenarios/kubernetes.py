"""Kubernetes scenario: the Kubernetes provisioner on a real single-node cluster.

The cluster is ``scripts/kube/cluster.sh``'s (etcd, kube-apiserver, controller
manager, scheduler and the real kubelet on containerd, built from Kubernetes' sources);
the provisioner authenticates as the chart's ServiceAccount (``tests.kubecluster``),
exactly as the test suite does. Requests are counted from the API server's audit log.
A cluster that was up before the run is reused and left up; one this run started is
taken down at the end.

* ``start``      -- start-to-ready (``start_kernel`` until a ``kernel_info`` reply) of a
                    kernel in a pod, next to the Docker provisioner on the same image,
                    interleaved (ABBA). Target: Kubernetes <= 1.3x Docker.
* ``concurrent`` -- 50 (quick: 20) kernels started at once: all ready, on one pod watch
                    (watch requests opened, from the audit log), and the API requests per
                    start by verb and resource.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import subprocess
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
from bench.scenarios.docker import DOCKER_KERNEL
from bench.scenarios.docker import _setup as _docker_setup
from orchestrator.store import open_store

NAME = "kubernetes"
DESCRIPTION = (
    "Kubernetes provisioner on a real single-node cluster (real kubelet): start-to-ready"
    " vs Docker, 50 concurrent starts on one watch, API requests per start"
)
KUBE_KERNEL = "bench-kube"
CONCURRENT_N, CONCURRENT_N_QUICK = 50, 20
START_TIMEOUT = 180.0


def _skip_reason() -> str:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs root on Linux (kubelet, containerd, CNI)"
    return ""


@contextlib.asynccontextmanager
async def _cluster(ctx: Context, problems: list[str]) -> AsyncIterator[Any]:
    """The cluster and the chart's shared-namespace release, with its kernelspec."""
    from tests.conftest import write_kernelspec
    from tests.kubecluster import (
        CLUSTER_SH,
        SHARED_VALUES,
        forget_provisioner_state,
        install_release,
        start_cluster,
        stop_cluster,
    )

    was_up = (
        subprocess.run(["bash", str(CLUSTER_SH), "status"], capture_output=True).returncode == 0
    )
    t0 = time.monotonic()
    cluster = await asyncio.to_thread(start_cluster)
    progress(f"kubernetes: cluster {'reused' if was_up else 'up'} in {time.monotonic() - t0:.1f}s")
    tokens = ctx.path("kube-tokens")
    tokens.mkdir(mode=0o700, exist_ok=True)
    try:
        release = await asyncio.to_thread(install_release, cluster, "kob", SHARED_VALUES, tokens)
        write_kernelspec(
            str(ctx.root / "data"),
            KUBE_KERNEL,
            "kubernetes-provisioner",
            release.config(startup_timeout=START_TIMEOUT),
        )
        yield release
    finally:
        forget_provisioner_state()
        left = [p.metadata.name for p in cluster.core().list_namespaced_pod("ko-kernels").items]
        if left:
            problems.append(f"pods left in ko-kernels: {left[:5]}")
        cluster.admin().close()
        if not was_up:
            await asyncio.to_thread(stop_cluster)


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
    await _docker_setup(ctx)
    problems: list[str] = []
    reps = 3 if ctx.quick else 6
    async with _cluster(ctx, problems):
        store = open_store(ctx.store_url("kube-start.db"))
        try:
            samples = await run_interleaved(
                "kubernetes start",
                {
                    "docker": lambda: _start_to_ready(store, DOCKER_KERNEL),
                    "kubernetes pod": lambda: _start_to_ready(store, KUBE_KERNEL),
                },
                reps,
                max_seconds=900,
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
        baseline="docker",
        target=Target.ratio_at_most(1.3),
        note="same image; the pod time includes scheduling, the sandbox, CNI and the Secret",
    )
    return rows + [error_row(NAME, bench, p) for p in problems]


def _request_kinds(events: list[dict[str, Any]]) -> collections.Counter[str]:
    kinds: collections.Counter[str] = collections.Counter()
    for e in events:
        ref = e.get("objectRef") or {}
        resource = ref.get("resource", "?") + (
            f"/{ref['subresource']}" if ref.get("subresource") else ""
        )
        kinds[f"{e['verb']} {resource}"] += 1
    return kinds


async def bench_concurrent(ctx: Context) -> list[Row]:
    n = CONCURRENT_N_QUICK if ctx.quick else CONCURRENT_N
    bench = f"{n} concurrent kubernetes starts"
    if reason := _skip_reason():
        return [error_row(NAME, bench, reason)]
    problems: list[str] = []
    kms: list[Any] = []
    wall, ready, errors = 0.0, [], []
    watches, per_start = -1.0, -1.0
    kinds: collections.Counter[str] = collections.Counter()
    async with _cluster(ctx, problems) as release:
        cluster = release.cluster
        store = open_store(ctx.store_url("kube-concurrent.db"))

        async def one(t0: float) -> float:
            km = orchestrator.AsyncKernelManager(kernel_name=KUBE_KERNEL, kernel_store=store)
            kms.append(km)
            await asyncio.wait_for(km.start_kernel(), START_TIMEOUT)
            (await _ready_client(km)).stop_channels()
            return time.perf_counter() - t0

        mark = cluster.audit_mark()
        try:
            wall, ready, errors = await start_all_at_once(
                "kernels in pods", n, one, START_TIMEOUT + 60
            )
            started = cluster.audit(mark, release.username, stages=("ResponseStarted",))
            watches = float(sum(1 for e in started if e["verb"] == "watch"))
            done = [e for e in cluster.audit(mark, release.username) if e["verb"] != "watch"]
            kinds = _request_kinds(done)
            per_start = sum(kinds.values()) / n
        finally:
            await asyncio.gather(*(_shutdown(km) for km in kms), return_exceptions=True)
            store.close()
    note = f"{len(errors)} failed" + (f": {str(errors[0])[:200]}" if errors else "")
    breakdown = ", ".join(f"{k} {v / n:g}" for k, v in sorted(kinds.items()))
    rows = [
        *concurrent_start_rows(NAME, bench, "kubernetes", n, wall, ready, note=note),
        measurement(
            NAME,
            f"{bench}: pod watches opened",
            "kubernetes",
            [watches],
            "count",
            target=Target.at_most(1),
            note="watch requests of the orchestrator's ServiceAccount in the audit log",
        ),
        measurement(
            NAME,
            f"{bench}: API requests per start",
            "kubernetes",
            [per_start],
            "count",
            note=f"audit log, the watch left out; per start: {breakdown}",
        ),
    ]
    return rows + [error_row(NAME, bench, p) for p in problems]


async def bench_restart(ctx: Context) -> list[Row]:
    bench = "restart to first answer (kubernetes)"
    if reason := _skip_reason():
        return [error_row(NAME, bench, reason)]
    problems: list[str] = []
    async with _cluster(ctx, problems):
        store = open_store(ctx.store_url("kube-restart.db"))
        try:
            rows = await restart_rows(
                NAME, KUBE_KERNEL, store, 3 if ctx.quick else 6, what="kubernetes pod"
            )
        finally:
            store.close()
    return rows + [error_row(NAME, bench, p) for p in problems]


BENCHMARKS = [
    Benchmark("start", "start-to-ready: Kubernetes pod vs Docker container", bench_start),
    Benchmark("concurrent", f"{CONCURRENT_N} Kubernetes kernels started at once", bench_concurrent),
    Benchmark("restart", "restart to first answer: a kept client vs a fresh one", bench_restart),
]
