"""Replicas scenario: gateway replicas over one PostgreSQL store, behind nginx.

Debian's PostgreSQL and nginx, started for the run on loopback (the test suite's own
helpers, ``tests.pgserver`` and ``tests.nginx``); the replicas are ``kernel-orchestrator
serve`` processes with ``--store postgresql://...``.

* ``throughput`` -- 10 kernels, 100 WebSocket clients (the gateway scenario's load
                    workers) executing ``1`` in a loop: through one replica, and through
                    three replicas behind nginx (round-robin, WebSockets proxied), blocks
                    interleaved ABBA. Executes/s, p50/p99 latency, and lost executes.
                    Target: no loss with three.
* ``failover``   -- a client on the replica holding a kernel; ``kill -9`` of that replica;
                    the time until the client's next execute is answered through another
                    replica (it reconnects through nginx). Executing needs no lease, so no
                    wait for one to expire. Target: p50 < 2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from typing import Any

from bench.harness import (
    Benchmark,
    Bounded,
    Context,
    Row,
    Target,
    abba,
    comparison,
    error_row,
    measurement,
    percentile,
    progress,
)
from bench.scenarios.gateway import (
    CLIENTS_PER_KERNEL,
    CODE,
    EXECUTE_TIMEOUT,
    N_KERNELS,
    LoadWorker,
    Server,
    _params,
    _start_kernels,
    connect_clients,
    stop_all,
    ws_execute,
    ws_open,
)

NAME = "replicas"
DESCRIPTION = (
    "gateway replicas on PostgreSQL behind nginx: 100-client throughput, one replica vs"
    " three; failover time after kill -9 of the holder"
)
FAILOVER_TARGET_S = 2.0
FAILOVER_REPS, FAILOVER_REPS_QUICK = 7, 3


class Group:
    """``count`` replicas sharing ``store_url`` and one token; with ``balanced``, nginx."""

    def __init__(self, ctx: Context, label: str, store_url: str, count: int, balanced: bool):
        self.servers = [Server("ours", f"{label}-{n}", ctx.root) for n in range(count)]
        token = self.servers[0].token
        for server in self.servers:
            server.store_url, server.token = store_url, token
        self.label, self.ctx, self.store_url = label, ctx, store_url
        self.nginx: Any = None
        self.balanced = balanced

    @property
    def base(self) -> str:
        return self.nginx.url if self.nginx is not None else self.servers[0].base

    @property
    def token(self) -> str:
        return self.servers[0].token

    async def start(self) -> None:
        await asyncio.gather(*(s.start() for s in self.servers))
        if self.balanced:
            from tests.nginx import Nginx

            self.nginx = await asyncio.to_thread(
                lambda: Nginx([s.port for s in self.servers]).start()
            )

    def kernel_pids(self) -> list[int]:
        return [p for s in self.servers for p in s.kernel_pids()]

    def pids(self) -> list[int]:
        return [s.pid for s in self.servers if s.pid] + self.kernel_pids()

    async def stop(self) -> list[str]:
        problems: list[str] = []
        for server in self.servers:  # the first deletes every kernel, whoever holds it
            problems += await stop_all([server])
        if self.nginx is not None:
            await asyncio.to_thread(self.nginx.stop)
        return problems

    def replace(self, dead: Server, rep: int) -> Server:
        """A new replica on the port of one that was killed (nginx knows that port)."""
        new = Server("ours", f"{dead.label}-r{rep}", self.ctx.root)
        new.port, new.store_url, new.token = dead.port, dead.store_url, dead.token
        self.servers[self.servers.index(dead)] = new
        return new


async def _postgres(ctx: Context) -> Any:
    import os

    from tests.pgserver import PostgresServer

    server = PostgresServer()
    await asyncio.to_thread(server.start)
    os.environ.update(server.env)  # the replicas find the password there
    return server


async def bench_throughput(ctx: Context) -> list[Row]:
    p = _params(ctx.quick)
    blocks, block_s, ramp_s = p["blocks"], p["block_s"], p["ramp_s"]
    n_clients = N_KERNELS * CLIENTS_PER_KERNEL
    pg = await _postgres(ctx)
    groups = {
        "one": Group(ctx, "one", pg.create_database(), 1, balanced=False),
        "three": Group(ctx, "three", pg.create_database(), 3, balanced=True),
    }
    workers: dict[str, list[LoadWorker]] = {name: [] for name in groups}
    rate: dict[str, list[float]] = {name: [] for name in groups}
    lat: dict[str, list[float]] = {name: [] for name in groups}
    errors: dict[str, int] = {name: 0 for name in groups}
    first_error: dict[str, str] = {name: "" for name in groups}
    problems: list[str] = []
    try:
        progress("starting PostgreSQL, 1 replica, 3 replicas behind nginx")
        for group in groups.values():
            await group.start()
        for name, group in groups.items():
            # Spread over the replicas as a round-robin balancer spreads starts.
            kernels: list[str] = []
            share = N_KERNELS // len(group.servers)
            for n, server in enumerate(group.servers):
                extra = N_KERNELS - share * len(group.servers) if n == 0 else 0
                kernels += await _start_kernels(server, share + extra)
            workers[name] = await connect_clients(
                ctx, name, group.base, group.token, kernels, p["client_warmup"]
            )
            progress(f"  {name}: {n_clients} clients on {N_KERNELS} kernels connected")
        names = list(groups)
        for i in Bounded("replica blocks", blocks, 60 + blocks * 2 * (block_s + 120)):
            for name in abba(i, names):
                start = time.monotonic() + 0.3
                measure_from = start + ramp_s
                end = measure_from + block_s
                for worker in workers[name]:
                    await worker.send(
                        {"cmd": "go", "start": start, "from": measure_from, "end": end}
                    )
                results = await asyncio.gather(
                    *(w.receive(ramp_s + block_s + EXECUTE_TIMEOUT + 30) for w in workers[name])
                )
                samples = [x for r in results for x in r["lat"]]
                count = sum(r["completed"] for r in results)
                errors[name] += sum(r["errors"] for r in results)
                first_error[name] = first_error[name] or next(
                    (r["first_error"] for r in results if r["first_error"]), ""
                )
                rate[name].append(count / block_s)
                lat[name] += samples
                progress(
                    f"  block {i + 1}/{blocks} {name}: {count / block_s:.0f} executes/s,"
                    f" p50 {percentile(sorted(samples), 50) * 1e3:.1f} ms"
                )
    finally:
        for ws in workers.values():
            await asyncio.gather(*(w.stop() for w in ws), return_exceptions=True)
        for group in groups.values():
            problems += await group.stop()
        await asyncio.to_thread(pg.close)

    label = f"{n_clients} clients x {N_KERNELS} kernels"
    rows = comparison(
        NAME,
        f"{label}: executes/s",
        rate,
        "count",
        baseline="one",
        note=f"{blocks} blocks x {block_s:g}s, ABBA; one replica direct vs three behind nginx",
    )
    for row in rows:
        row.unit = "exec/s"
    lrows = comparison(NAME, f"{label}: execute latency", lat, "ms", baseline="one")
    for row in lrows:
        srt = sorted(row.samples)
        row.note = f"p50 {percentile(srt, 50):.1f} ms, p99 {percentile(srt, 99):.1f} ms"
    rows += lrows
    for name in groups:
        rows.append(
            Row(
                NAME,
                f"{label}: lost executes",
                name,
                "count",
                [float(errors[name])],
                target=Target.at_most(0, "lost") if name == "three" else None,
                note=first_error[name][:200],
            ).finish()
        )
    rows += [error_row(NAME, "throughput: cleanup", p) for p in problems]
    return rows


async def _holder(store: Any, group: Group, kernel_id: str) -> Server:
    record = await store.get(kernel_id)
    pid = (record.owner or {}).get("pid") if record is not None else None
    for server in group.servers:
        if server.pid == pid:
            return server
    raise RuntimeError(f"no replica holds kernel {kernel_id} (owner {record and record.owner})")


async def bench_failover(ctx: Context) -> list[Row]:
    from orchestrator.store import open_store

    reps = FAILOVER_REPS_QUICK if ctx.quick else FAILOVER_REPS
    pg = await _postgres(ctx)
    group = Group(ctx, "failover", pg.create_database(), 3, balanced=True)
    store = None
    times: list[float] = []
    reconnects: list[float] = []
    problems: list[str] = []
    try:
        await group.start()
        store = open_store(group.store_url)
        for rep in Bounded("failover reps", reps, reps * 180):
            kid = await group.servers[rep % 3].start_kernel()
            holder = await _holder(store, group, kid)
            conn = await ws_open(holder.base, group.token, kid, 60)
            session = uuid.uuid4().hex
            await ws_execute(conn, session, EXECUTE_TIMEOUT)
            killed = time.monotonic()
            holder.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
            attempts = 0
            for _ in Bounded("failover execute", 600, 60, on_timeout="raise"):
                attempts += 1
                try:  # the client's job: reconnect through the balancer, execute again
                    conn.close()
                    conn = await ws_open(group.base, group.token, kid, 5)
                    await ws_execute(conn, session, 5)
                    break
                except Exception:
                    await asyncio.sleep(0.05)
            times.append(time.monotonic() - killed)
            reconnects.append(float(attempts))
            conn.close()
            progress(f"  rep {rep + 1}/{reps}: answered {times[-1]:.2f} s after kill -9")
            await asyncio.to_thread(holder.proc.wait, 10)  # type: ignore[union-attr]
            replacement = group.replace(holder, rep)
            await replacement.start()
            with contextlib.suppress(Exception):
                await group.servers[0].delete_kernel(kid)
    finally:
        if store is not None:
            store.close()
        problems += await group.stop()
        await asyncio.to_thread(pg.close)
    rows = [
        measurement(
            NAME,
            "failover: kill -9 of the holder to the next execute answered",
            "three",
            times,
            "s",
            target=Target.below(FAILOVER_TARGET_S, "s"),
            note=(
                f"{len(times)} reps; client on the holder, reconnects through nginx;"
                f" attempts per failover: median {percentile(sorted(reconnects), 50):g}"
                if times
                else ""
            ),
        )
    ]
    if times:
        rows[0].note += f"; p99 {percentile(sorted(times), 99):.2f} s"
    rows += [error_row(NAME, "failover: cleanup", p) for p in problems]
    if not times:
        rows.append(error_row(NAME, "failover", "no failover measured"))
    return rows


BENCHMARKS = [
    Benchmark(
        "throughput",
        f"{N_KERNELS * CLIENTS_PER_KERNEL} WebSocket clients on {N_KERNELS} kernels executing"
        f" '{CODE}': one replica vs three behind nginx (executes/s, p50/p99, losses)",
        bench_throughput,
    ),
    Benchmark(
        "failover",
        "kill -9 of the replica holding a kernel: time to the next execute answered",
        bench_failover,
    ),
]
