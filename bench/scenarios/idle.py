"""Idle scenario: what many idle kernels cost while nobody uses them.

* ``ssh-idle``   -- N idle SSH kernels on one host (hosts in network namespaces), held
                    by an ``AsyncMultiKernelManager`` with its auto-restarters polling
                    as a gateway's do. Over a window after start-up: SSH sessions the
                    host's sshd started (its own log, "Starting session"), sessions our
                    connection opened, and the CPU the remote agent used. Targets: 0
                    sessions per minute, agent < 1% of a core.
* ``local-idle`` -- N idle local kernels under one ``AsyncMultiKernelManager``, ours and
                    stock jupyter_client's side by side: the orchestrator process's file
                    descriptors and RSS per kernel. Targets: < 10 fds and < 2 MB each.
* ``docker-idle`` -- N idle Docker kernels under one ``AsyncMultiKernelManager``
                    with its auto-restarters, three ways one after the other: ours (the
                    engine's shared event stream, pushed to the restarters), the stream
                    with a restarter timer per kernel (the previous release), and the
                    poll by ``inspect`` on that timer: this process's and dockerd's CPU
                    per kernel over a window, fds per kernel. Targets: gateway + engine
                    <= 0.01 % of a core, <= 2 fds per kernel.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import jupyter_client.multikernelmanager as jc_mkm

import orchestrator
from bench.harness import (
    Benchmark,
    Bounded,
    Context,
    Row,
    Target,
    error_row,
    measurement,
    open_fds,
    progress,
    rss_mb,
)
from orchestrator.store import open_store

NAME = "idle"
DESCRIPTION = "idle cost: SSH sessions and agent CPU for idle SSH kernels; fds and RSS per kernel"

START_BATCH = 10
START_TIMEOUT = 120.0
SHUTDOWN_TIMEOUT = 300.0
SESSIONS_PER_MINUTE_TARGET = 0
AGENT_CPU_TARGET_PERCENT = 1.0
FDS_PER_KERNEL_TARGET = 10
RSS_PER_KERNEL_TARGET_MB = 2.0
IDLE_CPU_PER_KERNEL_TARGET = 0.01  # % of a core, gateway + engine (issue 33)
FDS_PER_DOCKER_KERNEL_TARGET = 2


def _params(quick: bool) -> dict[str, Any]:
    if quick:
        return {"ssh_n": 10, "window": 20.0, "local_n": 20, "docker_n": 10}
    return {"ssh_n": 100, "window": 60.0, "local_n": 200, "docker_n": 100}


async def _start_many(mkm: Any, n: int, kernel_name: str) -> list[str]:
    ids: list[str] = []
    for b in Bounded(f"start {n} kernels", (n + START_BATCH - 1) // START_BATCH, 60 + n * 10):
        size = min(START_BATCH, n - b * START_BATCH)
        ids += await asyncio.wait_for(
            asyncio.gather(*(mkm.start_kernel(kernel_name=kernel_name) for _ in range(size))),
            START_TIMEOUT,
        )
        progress(f"  started {len(ids)}/{n}")
    return ids


def _cpu_seconds(pid: int) -> float:
    raw = open(f"/proc/{pid}/stat").read()  # noqa: SIM115
    fields = raw[raw.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _sessions_logged(log_path: Any) -> int:
    try:
        return open(log_path, errors="replace").read().count("Starting session:")
    except OSError:
        return 0


# ------------------------------------------------------------------ SSH idle
async def bench_ssh_idle(ctx: Context) -> list[Row]:
    from bench.scenarios.ssh import HOST, SSH_KERNEL, _network, _skip_reason, _write_kernelspec
    from orchestrator.tunnels.ssh import pool

    p = _params(ctx.quick)
    n, window = p["ssh_n"], p["window"]
    bench = f"{n} idle ssh kernels"
    if reason := _skip_reason():
        return [Row(NAME, bench, "-", "", note=f"skipped: {reason}", result="n/a")]
    problems: list[str] = []
    rows: list[Row] = []
    async with _network(problems) as net:
        _write_kernelspec(ctx, net)
        store = open_store(ctx.store_url("ssh-idle.db"))
        mkm = orchestrator.AsyncMultiKernelManager(kernel_store=store, restore_on_start=False)
        try:
            progress(f"ssh-idle: starting {n} kernels on {HOST}")
            ids = await _start_many(mkm, n, SSH_KERNEL)
            await asyncio.sleep(15)  # past the restarters' stable-start time (10 s)
            conns = [c for c in pool.connections() if c.target.host == net.hosts[HOST].ip]
            from provisioners.ssh.agent import agent_for

            agent = agent_for(conns[0], mkm.get_kernel(ids[0]).provisioner.python)
            log = net.hosts[HOST].sshd_log
            sessions0, ours0 = _sessions_logged(log), sum(c.sessions_opened for c in conns)
            cpu0, t0 = _cpu_seconds(agent.remote_pid), time.monotonic()
            progress(f"ssh-idle: {n} kernels idle; watching for {window:g}s")
            await asyncio.sleep(window)
            elapsed = time.monotonic() - t0
            cpu = _cpu_seconds(agent.remote_pid) - cpu0
            sessions = _sessions_logged(log) - sessions0
            ours = sum(c.sessions_opened for c in conns) - ours0
            per_minute = 60.0 / elapsed
            alive = 0
            for kernel_id in ids:
                alive += bool(await mkm.get_kernel(kernel_id).is_alive())
            note = (
                f"{alive}/{n} alive; {len(conns)} SSH connection(s), agent pid"
                f" {agent.remote_pid} started {agent.starts} time(s); window {elapsed:.0f} s;"
                f" sshd logged {sessions0} session(s) while the kernels started"
            )
            rows += [
                measurement(
                    NAME, f"{bench}: sshd sessions per minute", "ours", [sessions * per_minute],
                    "count", target=Target.at_most(SESSIONS_PER_MINUTE_TARGET), note=note,
                ),
                measurement(
                    NAME, f"{bench}: sessions we opened per minute", "ours",
                    [ours * per_minute], "count", target=Target.at_most(SESSIONS_PER_MINUTE_TARGET),
                ),
                measurement(
                    NAME, f"{bench}: remote agent CPU (% of a core)", "ours",
                    [100.0 * cpu / elapsed], "count",
                    target=Target.below(AGENT_CPU_TARGET_PERCENT, "%"),
                ),
            ]  # fmt: skip
        except Exception as e:
            progress(f"ERROR ssh-idle: {e!r}")
            rows.append(error_row(NAME, bench, repr(e)))
        finally:
            await asyncio.wait_for(mkm.shutdown_all(now=True), SHUTDOWN_TIMEOUT)
            store.close()
    rows += [error_row(NAME, bench, prob) for prob in problems]
    return rows


# ---------------------------------------------------------------- local idle
async def _idle_cost(make_mkm: Any, n: int, label: str) -> tuple[float, float]:
    """(fds per kernel, RSS MB per kernel) of ``n`` idle kernels under one manager."""
    mkm = make_mkm()
    warm = await mkm.start_kernel(kernel_name="python3")  # imports, sockets, first-use costs
    await asyncio.sleep(1)
    fds0, rss0 = open_fds(), rss_mb()
    try:
        progress(f"local-idle ({label}): starting {n} kernels")
        await _start_many(mkm, n, "python3")
        await asyncio.sleep(10)  # idle: restarters polling, nothing else
        fds, rss = open_fds() - fds0, rss_mb() - rss0
        progress(f"local-idle ({label}): +{fds} fds, +{rss:.1f} MB for {n} kernels")
        return fds / n, rss / n
    finally:
        await asyncio.wait_for(mkm.shutdown_all(now=True), SHUTDOWN_TIMEOUT)
        del warm


async def bench_local_idle(ctx: Context) -> list[Row]:
    n = _params(ctx.quick)["local_n"]
    bench = f"{n} idle local kernels"
    store = open_store(ctx.store_url("local-idle.db"))
    try:
        ours = await _idle_cost(
            lambda: orchestrator.AsyncMultiKernelManager(kernel_store=store), n, "ours"
        )
        stock = await _idle_cost(jc_mkm.AsyncMultiKernelManager, n, "stock")
    except Exception as e:
        progress(f"ERROR local-idle: {e!r}")
        return [error_row(NAME, bench, repr(e))]
    finally:
        store.close()
    rows = []
    for what, i, unit_target in (
        ("fds per kernel", 0, Target.below(FDS_PER_KERNEL_TARGET, "fds")),
        ("RSS per kernel (MB)", 1, Target.below(RSS_PER_KERNEL_TARGET_MB, "MB")),
    ):
        stock_row = measurement(NAME, f"{bench}: {what}", "stock", [stock[i]], "count")
        ours_row = measurement(NAME, f"{bench}: {what}", "ours", [ours[i]], "count")
        ours_row.target = unit_target
        ours_row.ratio = ours[i] / stock[i] if stock[i] else None
        rows += [stock_row, ours_row.finish()]
    return rows


# --------------------------------------------------------------- Docker idle
def _dockerd_pid() -> int:
    import subprocess

    found = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True, check=False)
    pids = found.stdout.split()
    if not pids:
        raise RuntimeError("no dockerd process on this machine")
    return int(pids[0])


class _Earlier:
    """An earlier release, patched in: the restarter on its timer for ever (nothing
    pushed), and with ``inspect`` also each poll asks the engine about the kernel's
    own container (what the shared event stream replaced)."""

    def __init__(self, inspect: bool) -> None:
        self.inspect = inspect

    def __enter__(self) -> None:
        from provisioners.docker.provisioner import DockerProvisioner
        from provisioners.docker.watcher import exit_status_of_state

        async def poll(prov: Any) -> int | None:
            if prov.container_id is None:
                return 0
            return exit_status_of_state(await prov._state())

        self._saved = DockerProvisioner.poll, DockerProvisioner.watch_liveness
        if self.inspect:
            DockerProvisioner.poll = poll  # type: ignore[method-assign]
        DockerProvisioner.watch_liveness = lambda prov, notify: None  # type: ignore[method-assign]

    def __exit__(self, *exc: object) -> None:
        from provisioners.docker.provisioner import DockerProvisioner

        DockerProvisioner.poll, DockerProvisioner.watch_liveness = self._saved  # type: ignore[method-assign]


async def _docker_idle_cost(ctx: Context, n: int, window: float, label: str) -> dict[str, float]:
    """CPU of this process (the gateway's part) and of dockerd per idle Docker kernel,
    in % of a core, and this process's fds per kernel, over ``window`` seconds."""
    from bench.scenarios.docker import DOCKER_KERNEL

    store = open_store(ctx.store_url(f"docker-idle-{label}.db"))
    mkm = orchestrator.AsyncMultiKernelManager(kernel_store=store, restore_on_start=False)
    dockerd = _dockerd_pid()
    try:
        # One kernel first: the engine's client, its pooled connections and the event
        # stream are made once per process, not per kernel.
        await mkm.start_kernel(kernel_name=DOCKER_KERNEL)
        await asyncio.sleep(1)
        fds0 = open_fds()
        progress(f"docker-idle ({label}): starting {n} kernels")
        await _start_many(mkm, n, DOCKER_KERNEL)
        await asyncio.sleep(15)  # past the restarters' stable-start time (10 s)
        fds = open_fds() - fds0
        me0, engine0, t0 = _cpu_seconds(os.getpid()), _cpu_seconds(dockerd), time.monotonic()
        progress(f"docker-idle ({label}): {n} kernels idle; watching for {window:g}s")
        await asyncio.sleep(window)
        elapsed = time.monotonic() - t0
        me, engine = _cpu_seconds(os.getpid()) - me0, _cpu_seconds(dockerd) - engine0
        return {
            "gateway": 100.0 * me / elapsed / n,
            "engine": 100.0 * engine / elapsed / n,
            "fds": fds / n,
        }
    finally:
        await asyncio.wait_for(mkm.shutdown_all(now=True), SHUTDOWN_TIMEOUT)
        store.close()


async def bench_docker_idle(ctx: Context) -> list[Row]:
    from bench.scenarios.docker import _setup

    p = _params(ctx.quick)
    n, window = p["docker_n"], p["window"]
    bench = f"{n} idle docker kernels"
    try:
        await _setup(ctx)
        ours = await _docker_idle_cost(ctx, n, window, "ours")
        with _Earlier(inspect=False):
            timers = await _docker_idle_cost(ctx, n, window, "timers")
        with _Earlier(inspect=True):
            baseline = await _docker_idle_cost(ctx, n, window, "inspect")
    except Exception as e:
        progress(f"ERROR docker-idle: {e!r}")
        return [error_row(NAME, bench, repr(e))]
    rows = []
    for what, key, target in (
        ("gateway CPU per kernel (% of a core)", "gateway", None),
        ("engine CPU per kernel (% of a core)", "engine", None),
        ("fds per kernel", "fds", Target.at_most(FDS_PER_DOCKER_KERNEL_TARGET, "fds")),
    ):
        base_row = measurement(
            NAME, f"{bench}: {what}", "poll by inspect", [baseline[key]], "count"
        )
        timers_row = measurement(NAME, f"{bench}: {what}", "stream, timers", [timers[key]], "count")
        timers_row.ratio = timers[key] / baseline[key] if baseline[key] else None
        ours_row = measurement(NAME, f"{bench}: {what}", "ours", [ours[key]], "count")
        ours_row.target = target
        ours_row.ratio = ours[key] / baseline[key] if baseline[key] else None
        rows += [base_row, timers_row.finish(), ours_row.finish()]
    total = measurement(
        NAME,
        f"{bench}: gateway + engine CPU per kernel (% of a core)",
        "ours",
        [ours["gateway"] + ours["engine"]],
        "count",
        target=Target.at_most(IDLE_CPU_PER_KERNEL_TARGET, "%"),
        note=(
            f"stream with a timer per kernel: {timers['gateway'] + timers['engine']:.4f} %;"
            f" poll by inspect: {baseline['gateway'] + baseline['engine']:.4f} %"
        ),
    )
    return [*rows, total]


BENCHMARKS = [
    Benchmark("ssh-idle", "idle SSH kernels: sessions per minute, agent CPU", bench_ssh_idle),
    Benchmark(
        "docker-idle",
        "idle Docker kernels: gateway and engine CPU, fds per kernel (event stream vs inspect)",
        bench_docker_idle,
    ),
    Benchmark("local-idle", "idle local kernels: fds and RSS per kernel", bench_local_idle),
]
