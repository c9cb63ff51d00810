"""Docker scenario: kernels in containers (Docker provisioner) vs local kernels.

Both variants use ``orchestrator.AsyncKernelManager`` with an SQLite store; only the
kernelspec differs: ``python3`` (our local provisioner) or a kernelspec written into
the run's temporary ``JUPYTER_DATA_DIR/kernels/`` whose ``kernel_provisioner`` is
``docker-provisioner`` with the image ``kernel-orchestrator/kernel-python:latest``
(ports published on the engine host's 127.0.0.1: loopback only).

* ``start``      -- start-to-ready: ``start_kernel()`` then a client's
                    ``wait_for_ready()``; local vs docker interleaved (ABBA), one
                    untimed warm-up each; shutdown untimed.
* ``roundtrip``  -- execute round trip of ``pass`` on one kernel of each, interleaved
                    in blocks of executes (ABBA over blocks).
* ``concurrent`` -- 20 docker kernels started at once (``asyncio.gather`` of
                    start_kernel + wait_for_ready): wall time, per-kernel time to
                    ready, failures. All shut down concurrently afterwards.

Setup (once per process): ``bash docker/build.sh --offline-base --only kernel-python``
makes sure the engine runs and the image exists (a fresh machine: installs and starts
dockerd, builds the image). If it fails, every benchmark of the scenario errors with
the build's last lines.

After every benchmark, in ``finally``: containers labelled
``kernel-orchestrator.kernel-id`` that belong to this run (labelled with one of the
run's store instance ids, or with a kernel id the run started) are listed; any found
are removed and the benchmark reports an ERROR. Containers of other deployments (a
concurrent test session, say) are counted in the progress log but never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import zmq.asyncio

import orchestrator
from bench.harness import (
    Benchmark,
    Context,
    Row,
    Target,
    comparison,
    concurrent_start_rows,
    error_row,
    interleaved_round_trips,
    progress,
    run_interleaved,
    start_all_at_once,
)
from bench.restarts import restart_rows
from bench.scenarios.core import _diagnostics, _execute, _ready_client, _shutdown
from orchestrator.labels import LABEL_INSTANCE, LABEL_KERNEL_ID
from orchestrator.store import KernelStore, open_store

NAME = "docker"
DESCRIPTION = "Docker provisioner vs local kernels: start, execute round trip, 20 concurrent"

REPO = Path(__file__).resolve().parents[2]
BUILD_CMD = ["bash", str(REPO / "docker" / "build.sh"), "--offline-base", "--only", "kernel-python"]
BUILD_TIMEOUT = 1800.0  # a fresh machine: install dockerd, debootstrap a base, pip install
IMAGE = "kernel-orchestrator/kernel-python:latest"
LOCAL_KERNEL = "python3"
DOCKER_KERNEL = "ko-bench-docker"

# Targets (informational; see bench/README.md).
START_RATIO_TARGET = 1.5
CONCURRENT_N = 20

# Per-operation time limits, seconds.
START_TIMEOUT = 90.0  # the provisioner's own startup_timeout (60 s) fires first
CONCURRENT_TIMEOUT = 240.0  # the whole gather of 20 starts
SHUTDOWN_ALL_TIMEOUT = 180.0
EXECUTE_TIMEOUT = 10.0
ENGINE_TIMEOUT = 120.0  # one docker SDK query (list / remove leftovers)


def _params(quick: bool) -> dict[str, Any]:
    if quick:
        return {"start_reps": 3, "rt_reps": 50, "rt_block": 10, "rt_warmup": 10}
    return {"start_reps": 8, "rt_reps": 200, "rt_block": 20, "rt_warmup": 20}


# ------------------------------------------------------------------------------ setup

_setup_error: str | None = None
_setup_done = False


def _build(log_path: Path) -> None:
    """Run the build script (engine + image), its output into ``log_path``."""
    global _setup_done, _setup_error
    if _setup_done:
        return
    if _setup_error is not None:
        raise RuntimeError(_setup_error)
    progress(f"docker setup: {' '.join(BUILD_CMD[1:])} (log: {log_path})")
    t0 = time.monotonic()
    try:
        with log_path.open("ab") as log:
            proc = subprocess.run(
                BUILD_CMD,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=BUILD_TIMEOUT,
                check=False,
            )
        rc: int | str = proc.returncode
    except subprocess.TimeoutExpired:
        rc = f"timeout after {BUILD_TIMEOUT:g}s"
    except OSError as e:
        rc = repr(e)
    if rc != 0:
        tail = log_path.read_text(errors="replace").splitlines()[-15:]
        for line in tail:
            progress(f"  build.sh| {line}")
        _setup_error = (
            f"Docker setup failed: docker/build.sh --offline-base --only kernel-python"
            f" exited {rc}; last line: {tail[-1] if tail else '-'} (full log: {log_path})"
        )
        raise RuntimeError(_setup_error)
    client = docker.from_env(timeout=60)
    try:
        client.ping()
        client.images.get(IMAGE)
    except docker.errors.DockerException as e:
        _setup_error = f"Docker setup: engine or image {IMAGE} not usable after build.sh: {e}"
        raise RuntimeError(_setup_error) from e
    finally:
        client.close()
    _setup_done = True
    progress(f"docker setup: engine up, {IMAGE} present ({time.monotonic() - t0:.1f}s)")


def _write_kernelspec() -> None:
    data_dir = os.environ.get("JUPYTER_DATA_DIR", "")
    if not data_dir:
        raise RuntimeError("JUPYTER_DATA_DIR is not set (bench.run isolates it)")
    spec_dir = Path(data_dir) / "kernels" / DOCKER_KERNEL
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python (Docker, benchmark)",
        "language": "python",
        "metadata": {
            "kernel_provisioner": {
                "provisioner_name": "docker-provisioner",
                "config": {"image": IMAGE},
            }
        },
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec, indent=1))


async def _setup(ctx: Context) -> None:
    await asyncio.to_thread(_build, ctx.path("docker-build.log"))
    _write_kernelspec()


# ------------------------------------------------------------------- leftover check


class Owned:
    """What this benchmark created: store instance ids and kernel ids (for the check)."""

    def __init__(self) -> None:
        self.instances: set[str] = set()
        self.kernel_ids: set[str] = set()

    def add_store(self, store: KernelStore) -> KernelStore:
        self.instances.add(store.instance_id)
        return store

    def add_km(self, km: Any) -> Any:
        if km.kernel_id:
            self.kernel_ids.add(str(km.kernel_id))
        return km


def _remove_leftovers(owned: Owned) -> tuple[list[str], int]:
    client = docker.from_env(timeout=60)
    try:
        found = client.containers.list(
            all=True, filters={"label": LABEL_KERNEL_ID}, ignore_removed=True
        )
        ours = [
            c
            for c in found
            if c.labels.get(LABEL_INSTANCE) in owned.instances
            or c.labels.get(LABEL_KERNEL_ID) in owned.kernel_ids
        ]
        for c in ours:
            with contextlib.suppress(docker.errors.NotFound):
                c.remove(force=True, v=True)
        return [f"{c.name} ({c.status})" for c in ours], len(found) - len(ours)
    finally:
        client.close()


async def _check_containers(owned: Owned, label: str) -> str:
    """Remove this run's containers still on the engine; an error message if there were any."""
    try:
        names, foreign = await asyncio.wait_for(
            asyncio.to_thread(_remove_leftovers, owned), ENGINE_TIMEOUT
        )
    except Exception as e:
        progress(f"WARNING {label}: could not list containers: {e!r}")
        return f"could not check for leftover containers: {e!r}"
    if foreign:
        progress(f"{label}: {foreign} container(s) of other deployments on the engine (untouched)")
    if names:
        progress(f"WARNING {label}: {len(names)} container(s) left behind, removed: {names}")
        return f"{len(names)} kernel container(s) left after shutdown (removed): {names[:3]}"
    progress(f"{label}: no kernel container of this run left")
    return ""


# ------------------------------------------------------------------------- 1. start


async def _start_to_ready(make_km: Callable[[], Any], owned: Owned) -> float:
    km = make_km()
    kc = None
    try:
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(km.start_kernel(), START_TIMEOUT)
        finally:
            owned.add_km(km)
        kc = await _ready_client(km)
        return time.perf_counter() - t0
    finally:
        if kc is not None:
            kc.stop_channels()
        await _shutdown(km)


async def bench_start(ctx: Context) -> list[Row]:
    p = _params(ctx.quick)
    await _setup(ctx)
    owned = Owned()
    store = owned.add_store(open_store(ctx.store_url("docker-start.db")))
    left = ""
    try:

        def variant(kernel: str) -> Callable[[], Any]:
            return lambda: _start_to_ready(
                lambda: orchestrator.AsyncKernelManager(kernel_name=kernel, kernel_store=store),
                owned,
            )

        progress(f"start-to-ready: 1 warm-up + {p['start_reps']} reps each, interleaved")
        samples = await run_interleaved(
            "start-to-ready",
            {"local": variant(LOCAL_KERNEL), "docker": variant(DOCKER_KERNEL)},
            p["start_reps"],
            warmup=1,
            max_seconds=120 + p["start_reps"] * 90,
            op_timeout=START_TIMEOUT + 60 + 60,
            report_every=max(1, p["start_reps"] // 4),
        )
        for name, s in samples.items():
            progress(f"start-to-ready {name}: " + ", ".join(f"{x:.3f}" for x in s))
    finally:
        store.close()
        left = await _check_containers(owned, "docker/start")
    rows = comparison(
        NAME,
        "kernel start-to-ready",
        samples,
        "s",
        baseline="local",
        target=Target.ratio_at_most(START_RATIO_TARGET),
    )
    if left:
        rows.append(error_row(NAME, "kernel start-to-ready", left))
    return rows


# -------------------------------------------------------------------- 2. round trip


async def bench_roundtrip(ctx: Context) -> list[Row]:
    p = _params(ctx.quick)
    await _setup(ctx)
    owned = Owned()
    store = owned.add_store(open_store(ctx.store_url("docker-roundtrip.db")))
    kms: dict[str, Any] = {
        name: orchestrator.AsyncKernelManager(kernel_name=kernel, kernel_store=store)
        for name, kernel in (("local", LOCAL_KERNEL), ("docker", DOCKER_KERNEL))
    }
    kcs: dict[str, Any] = {}
    samples: dict[str, list[float]] = {name: [] for name in kms}
    left = ""
    try:
        for name, km in kms.items():
            try:
                await asyncio.wait_for(km.start_kernel(), START_TIMEOUT)
            finally:
                owned.add_km(km)
            kcs[name] = await _ready_client(km)
        await interleaved_round_trips(
            kcs,
            _execute,
            samples,
            warmup=p["rt_warmup"],
            reps=p["rt_reps"],
            block=p["rt_block"],
            execute_timeout=EXECUTE_TIMEOUT + 5,
        )
    finally:
        for kc in kcs.values():
            kc.stop_channels()
        await asyncio.gather(*(_shutdown(km) for km in kms.values()))
        store.close()
        left = await _check_containers(owned, "docker/roundtrip")
    rows = comparison(
        NAME,
        "execute round trip ('pass')",
        samples,
        "ms",
        baseline="local",
        note=f"interleaved in blocks of {p['rt_block']} executes",
    )
    if left:
        rows.append(error_row(NAME, "execute round trip ('pass')", left))
    return rows


# -------------------------------------------------------------------- 3. concurrent


async def bench_concurrent(ctx: Context) -> list[Row]:
    await _setup(ctx)
    n = CONCURRENT_N
    owned = Owned()
    store = owned.add_store(open_store(ctx.store_url("docker-concurrent.db")))
    zctx = zmq.asyncio.Context()
    kms: list[Any] = []
    left = ""
    bench = f"{n} concurrent docker starts"
    try:
        # One untimed start first, so that this benchmark run alone measures a warm engine.
        progress("concurrent: 1 untimed warm-up start")
        await _start_to_ready(
            lambda: orchestrator.AsyncKernelManager(
                kernel_name=DOCKER_KERNEL, kernel_store=store, context=zctx
            ),
            owned,
        )

        async def one(t0: float) -> float:
            km = orchestrator.AsyncKernelManager(
                kernel_name=DOCKER_KERNEL, kernel_store=store, context=zctx
            )
            kms.append(km)
            try:
                await asyncio.wait_for(km.start_kernel(), START_TIMEOUT)
            except Exception as e:
                raise RuntimeError(f"start_kernel: {(str(e).splitlines() or [repr(e)])[0]}") from e
            finally:
                owned.add_km(km)
            try:
                kc = await _ready_client(km)
            except Exception as e:
                raise RuntimeError(f"wait_for_ready: {e!r}{(await _diagnostics(km))[:300]}") from e
            kc.stop_channels()
            return time.perf_counter() - t0

        wall, ready, errors = await start_all_at_once("docker kernels", n, one, CONCURRENT_TIMEOUT)
    finally:
        progress(f"concurrent: shutting down {len(kms)} kernels concurrently")
        t_sd = time.perf_counter()
        try:
            await asyncio.wait_for(
                asyncio.gather(*(_shutdown(km) for km in kms)), SHUTDOWN_ALL_TIMEOUT
            )
        except Exception as e:
            progress(f"WARNING concurrent: shutdown: {e!r}")
        shutdown_s = time.perf_counter() - t_sd
        progress(f"concurrent: shutdown took {shutdown_s:.2f}s")
        zctx.destroy(linger=0)
        store.close()
        left = await _check_containers(owned, "docker/concurrent")

    note = f"{len(ready)}/{n} ready, {len(errors)} failed; concurrent shutdown {shutdown_s:.1f} s"
    if errors:
        note += f"; first failure: {str(errors[0])[:200]}"
    rows = concurrent_start_rows(NAME, bench, "docker", n, wall, ready, note=note)
    if left:
        rows.append(error_row(NAME, bench, left))
    return rows


async def bench_restart(ctx: Context) -> list[Row]:
    await _setup(ctx)
    store = open_store(ctx.store_url("docker-restart.db"))
    try:
        return await restart_rows(NAME, DOCKER_KERNEL, store, 3 if ctx.quick else 8, what="docker")
    finally:
        store.close()


BENCHMARKS = [
    Benchmark("start", "kernel start-to-ready, docker vs local", bench_start),
    Benchmark(
        "roundtrip", "execute round trip of a trivial cell, docker vs local", bench_roundtrip
    ),
    Benchmark(
        "concurrent", f"{CONCURRENT_N} docker kernels started concurrently", bench_concurrent
    ),
    Benchmark("restart", "restart to first answer: a kept client vs a fresh one", bench_restart),
]
