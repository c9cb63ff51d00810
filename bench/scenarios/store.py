"""Store scenario: what kernels cost the kernel store while nothing happens to them.

The kernels are the minimal kernel (``bench/minimal_kernel.py``): what is measured is
the orchestrator's traffic, not the kernels.

* ``traffic`` -- 200 (quick: 50) idle kernels started through replica 0 of three
                 gateway replicas on one PostgreSQL (Debian's, with
                 ``pg_stat_statements``); replica 1 serves 50 (quick: 20) of them as a
                 client (a websocket opened, one execute, closed). After the start-ups,
                 every statement the replicas send in a window of four leases (lease 15
                 s), by kind. Targets: at most 3 ownership reads per lease interval for
                 the three replicas together, no payload read.
* ``listing`` -- ``GET /api/kernels`` on one replica with 1,000 (quick: 200) records in
                 the store (kernels another live replica owns): while nothing changes
                 (served from the cache: one tiny read) and with one record changed
                 before each request (the cache reloaded). Target: p50 < 50 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from pathlib import Path
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
    progress,
)
from bench.scenarios.gateway import Server, stop_all, ws_execute, ws_open

NAME = "store"
DESCRIPTION = (
    "store traffic of idle kernels on three PostgreSQL replicas (pg_stat_statements);"
    " GET /api/kernels with 1,000 records"
)
KERNEL = "bench-minimal"
LEASE_SECONDS = 15.0
SETTLE_SECONDS = 40.0  # past the first activity save (every 30 s) after the start-ups
LISTING_TARGET_MS = 50.0
MINIMAL = str(Path(__file__).resolve().parents[1] / "minimal_kernel.py")


def _params(quick: bool) -> dict[str, Any]:
    if quick:
        return {"kernels": 50, "clients": 20, "leases": 2, "records": 200, "requests": 30}
    return {"kernels": 200, "clients": 50, "leases": 4, "records": 1000, "requests": 100}


def minimal_kernelspec(ctx: Context) -> None:
    """The minimal kernel's kernelspec (``KERNEL``), local provisioner, in the run's tree."""
    from tests.conftest import write_kernelspec

    write_kernelspec(
        str(ctx.root / "data"),
        KERNEL,
        "orchestrator-local-provisioner",
        {},
        argv=[sys.executable, MINIMAL, "-f", "{connection_file}"],
    )


async def _postgres(statements: bool) -> Any:
    from tests.pgserver import PostgresServer

    server = PostgresServer()
    await asyncio.to_thread(server.init)
    if statements:
        with open(server.data / "postgresql.conf", "a") as conf:
            conf.write("shared_preload_libraries = 'pg_stat_statements'\n")
    await asyncio.to_thread(server.start)
    os.environ.update(server.env)  # the replicas find the password there
    return server


def _sql(url: str, query: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query)
        return list(cur.fetchall()) if cur.description else []


def _kind(query: str) -> str:
    q = " ".join(query.split())
    if q.startswith("SELECT kernel_id, owner_info, lease_expires"):
        return "ownership reads"
    if "SELECT data, last_activity" in q:
        return "payload reads"
    if q.startswith("UPDATE kernels SET lease_expires"):
        return "lease renewals"
    if q.startswith("SELECT counter FROM changes"):
        return "change-count reads"
    if q.upper() in ("BEGIN", "COMMIT", "ROLLBACK") or q.upper().startswith("SET "):
        return "transaction control"
    return "other"


async def start_minimal_kernels(server: Server, n: int) -> list[str]:
    """``n`` minimal kernels through ``server``'s REST API, ten at a time."""
    ids: list[str] = []
    for b in Bounded(f"start {n} kernels", (n + 9) // 10, 60 + n * 5):
        size = min(10, n - b * 10)
        models = await asyncio.gather(
            *(
                server.request("POST", "/api/kernels", {"name": KERNEL}, timeout=120)
                for _ in range(size)
            )
        )
        ids += [str(model["id"]) for _, model in models]
        server.started_ids.update(ids)
        if len(ids) % 50 == 0:
            progress(f"  started {len(ids)}/{n}")
    return ids


async def bench_traffic(ctx: Context) -> list[Row]:
    bench = "idle store traffic"
    p = _params(ctx.quick)
    minimal_kernelspec(ctx)
    problems: list[str] = []
    old_lease = os.environ.get("KERNEL_ORCHESTRATOR_LEASE_SECONDS")
    os.environ["KERNEL_ORCHESTRATOR_LEASE_SECONDS"] = str(LEASE_SECONDS)
    pg = await _postgres(statements=True)
    servers = [Server("ours", f"store-{n}", ctx.root) for n in range(3)]
    counts: dict[str, int] = {}
    others: list[tuple[int, str]] = []
    window = 0.0
    try:
        url = pg.create_database()
        _sql(url, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        for server in servers:
            server.store_url, server.token = url, servers[0].token
        await asyncio.gather(*(s.start() for s in servers))
        ids = await start_minimal_kernels(servers[0], p["kernels"])
        progress(f"store traffic: {len(ids)} kernels up; {p['clients']} served by replica 1")
        for kernel_id in ids[: p["clients"]]:
            conn = await ws_open(servers[1].base, servers[1].token, kernel_id, 60)
            try:
                await ws_execute(conn, uuid.uuid4().hex, 60)
            finally:
                conn.close()
        # The start-ups' own traffic settles: their activity is saved once (every 30 s).
        await asyncio.sleep(SETTLE_SECONDS)
        _sql(url, "SELECT pg_stat_statements_reset()")
        started = time.monotonic()
        window = p["leases"] * LEASE_SECONDS
        progress(f"store traffic: counting statements for {window:g} s")
        await asyncio.sleep(window)
        window = time.monotonic() - started
        rows = _sql(
            url,
            "SELECT query, calls FROM pg_stat_statements"
            " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        for query, calls in rows:
            if "pg_stat_statements" in query:
                continue  # this benchmark's own
            counts[_kind(query)] = counts.get(_kind(query), 0) + int(calls)
            if _kind(query) == "other":
                others.append((int(calls), " ".join(query.split())[:120]))
    except Exception as e:
        problems.append(f"{type(e).__name__}: {e}")
    finally:
        problems += await stop_all(servers)
        if left := kernel_processes(str(ctx.root), "minimal_kernel"):
            problems.append(f"{len(left)} kernel processes left")
        await asyncio.to_thread(pg.close)
        if old_lease is None:
            os.environ.pop("KERNEL_ORCHESTRATOR_LEASE_SECONDS", None)
        else:
            os.environ["KERNEL_ORCHESTRATOR_LEASE_SECONDS"] = old_lease
    out = [error_row(NAME, bench, p) for p in problems]
    if not window:
        return out or [error_row(NAME, bench, "nothing measured")]
    leases = window / LEASE_SECONDS
    per_minute = {k: v * 60 / window for k, v in counts.items()}
    detail = ", ".join(f"{k} {v:.1f}" for k, v in sorted(per_minute.items()))
    if others:
        detail += "; other: " + "; ".join(f"{n}x {q}" for n, q in sorted(others)[::-1][:3])
    what = f"{p['kernels']} idle kernels on 3 replicas"
    out += [
        measurement(
            NAME,
            f"{bench}: ownership reads per lease interval ({what})",
            "ours",
            [counts.get("ownership reads", 0) / leases],
            "count",
            target=Target.at_most(3),
            note=f"per minute, by kind: {detail}",
        ),
        measurement(
            NAME,
            f"{bench}: payload reads per minute ({what})",
            "ours",
            [per_minute.get("payload reads", 0.0)],
            "count",
            target=Target.at_most(0),
        ),
        measurement(
            NAME,
            f"{bench}: statements per minute, all kinds ({what})",
            "ours",
            [sum(v for k, v in per_minute.items() if k != "transaction control")],
            "count",
            note="BEGIN/COMMIT not counted",
        ),
    ]
    return out


async def bench_listing(ctx: Context) -> list[Row]:
    bench = "GET /api/kernels"
    p = _params(ctx.quick)
    problems: list[str] = []
    pg = await _postgres(statements=False)
    server = Server("ours", "listing", ctx.root)
    unchanged: list[float] = []
    changed: list[float] = []
    try:
        from orchestrator.store import KernelRecord, open_store
        from orchestrator.store.lease import Holder

        url = pg.create_database()
        store = open_store(url)
        # Kernels a live replica on another machine owns for an hour: listed, never
        # attached to or taken over by the replica measured.
        elsewhere = Holder(uuid.uuid4().hex[:16], "gateway", "elsewhere", "other-machine", 1)
        try:
            for n in range(p["records"]):
                await store.insert(
                    KernelRecord(f"listed-{n:05d}", KERNEL, "orchestrator-local-provisioner"),
                    elsewhere,
                    3600,
                )
            server.store_url = url
            await server.start()
            await server.request("GET", "/api/kernels", timeout=60)  # warm

            async def timed() -> float:
                t0 = time.perf_counter()
                code, listed = await server.request("GET", "/api/kernels", timeout=60)
                if code != 200 or len(listed) != p["records"]:
                    raise RuntimeError(f"listing answered {code} with {len(listed)} kernels")
                return time.perf_counter() - t0

            for i in Bounded("listing", p["requests"], 300):
                unchanged.append(await timed())
                await store.touch(f"listed-{i % p['records']:05d}")  # one change
                changed.append(await timed())
        finally:
            store.close()
    except Exception as e:
        problems.append(f"{type(e).__name__}: {e}")
    finally:
        with contextlib.suppress(Exception):
            problems += await server.stop()
        await asyncio.to_thread(pg.close)
    out = [error_row(NAME, bench, p) for p in problems]
    if not unchanged:
        return out or [error_row(NAME, bench, "nothing measured")]
    what = f"{p['records']} records"
    return [
        *out,
        measurement(
            NAME,
            f"{bench} ({what}), nothing changed",
            "cached",
            unchanged,
            "ms",
            target=Target.below(LISTING_TARGET_MS, "ms"),
            note="served from the cache: one read of the store's change count",
        ),
        measurement(
            NAME,
            f"{bench} ({what}), one record changed before each",
            "reloaded",
            changed,
            "ms",
            target=Target.below(LISTING_TARGET_MS, "ms"),
        ),
    ]


BENCHMARKS = [
    Benchmark(
        "traffic",
        "idle kernels on 3 PostgreSQL replicas: statements by kind (pg_stat_statements)",
        bench_traffic,
    ),
    Benchmark("listing", "GET /api/kernels with 1,000 records: cached vs reloaded", bench_listing),
]
