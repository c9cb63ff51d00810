"""Hostile scenario: a tenant who floods their websockets while their kernel restarts.

One ``kernel-orchestrator serve`` (its defaults: 8 MiB frames, 16 MiB held per user,
64 websockets per user) serves two kernels. The *attacker* opens 50 websockets on
theirs, kills it (``os._exit``: the auto-restarter brings it back, and every socket
holds what it is sent meanwhile) and sends on every socket, reopening each one the
gateway closes: 10 MiB frames (over the frame cap) for half the attack, then 6 MiB
frames (under it, into the hold) for the other half. The *victim* executes ``1`` in a
loop on the other kernel, during a quiet phase and during the attack.

Reported: the gateway's RSS growth over its quiet baseline (peak during each phase;
target < 100 MB), the victim's execute latency during the attack beside the quiet
phase (median ratio; target < 1.5), and how many attacker sockets the gateway closed.
Both phases run in one process, side by side. The attacker and the victim use the
operator's token here (tenants of a users file need host kernel accounts); the caps
that apply are the same: hold bytes and frame size count for every user, and 50
sockets stay under the per-user cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path

from bench.harness import (
    Benchmark,
    Bounded,
    Context,
    Row,
    Target,
    comparison,
    error_row,
    measurement,
    progress,
)
from bench.scenarios.gateway import (
    EXECUTE_TIMEOUT,
    WS_TIMEOUT,
    Server,
    stop_all,
    ws_execute,
    ws_open,
)

NAME = "hostile"
DESCRIPTION = "a tenant flooding 50 websockets during a restart hold: gateway RSS, victim latency"

SOCKETS = 50
BIG_FRAME = 10 * 1024 * 1024  # over the gateway's 8 MiB frame cap
HELD_FRAME = 6 * 1024 * 1024  # under it: goes into the restart hold
RSS_GROWTH_TARGET_MB = 100.0
LATENCY_RATIO_TARGET = 1.5
MAX_FRAMES = 2000  # every frame the attack may send, in all
MAX_REOPENS = 500


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Sampler:
    """The peak RSS of a process, sampled every 50 ms while running."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.peak = max(self.peak, rss_mb(self.pid))
            await asyncio.sleep(0.05)

    def __enter__(self) -> Sampler:
        self.peak = rss_mb(self.pid)
        self._task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()


async def victim_loop(server: Server, kernel: str, seconds: float) -> list[float]:
    """Execute ``1`` back to back for ``seconds``; each execute's latency."""
    conn = await ws_open(server.base, server.token, kernel, WS_TIMEOUT)
    latencies: list[float] = []
    session = uuid.uuid4().hex
    end = time.monotonic() + seconds
    try:
        for _ in Bounded("victim executes", 100_000, seconds + 60):
            if time.monotonic() >= end:
                break
            began = time.monotonic()
            await ws_execute(conn, session, EXECUTE_TIMEOUT)
            latencies.append(time.monotonic() - began)
    finally:
        conn.close()
    return latencies


class Attack:
    """50 sockets on the attacker's kernel, each sending frames while the attack runs."""

    def __init__(self, server: Server, kernel: str) -> None:
        self.server, self.kernel = server, kernel
        self.frames = 0
        self.closed_by_gateway = 0
        self.reopens = 0
        self._began = time.monotonic()

    async def _socket(self, end: float) -> None:
        conn = await ws_open(self.server.base, self.server.token, self.kernel, WS_TIMEOUT)
        try:
            while time.monotonic() < end and self.frames < MAX_FRAMES:
                half = time.monotonic() < end - (end - self._began) / 2
                size = BIG_FRAME if half else HELD_FRAME
                try:
                    await conn.write_message("x" * size)
                    self.frames += 1
                except Exception:  # the gateway closed it: count it, reopen (bounded)
                    self.closed_by_gateway += 1
                    if self.reopens >= MAX_REOPENS:
                        return
                    self.reopens += 1
                    conn = await ws_open(
                        self.server.base, self.server.token, self.kernel, WS_TIMEOUT
                    )
                await asyncio.sleep(0.01)
        finally:
            conn.close()

    async def run(self, seconds: float) -> None:
        self._began = time.monotonic()
        end = self._began + seconds
        killer = await ws_open(self.server.base, self.server.token, self.kernel, WS_TIMEOUT)
        killer.write_message(_exit_message())
        await asyncio.sleep(0.3)  # the kernel is gone: every socket is holding now
        killer.close()
        await asyncio.gather(*(self._socket(end) for _ in range(SOCKETS)))


def _exit_message() -> str:
    import json

    return json.dumps(
        {
            "header": {
                "msg_id": uuid.uuid4().hex,
                "msg_type": "execute_request",
                "username": "attacker",
                "session": uuid.uuid4().hex,
                "date": "",
                "version": "5.3",
            },
            "parent_header": {},
            "metadata": {},
            "content": {"code": "import os; os._exit(1)", "silent": True},
            "channel": "shell",
            "buffers": [],
        }
    )


async def bench_hold(ctx: Context) -> list[Row]:
    seconds = 6.0 if ctx.quick else 12.0
    server = Server("ours", "hostile", ctx.root)
    rows: list[Row] = []
    try:
        await server.start()
        assert server.proc is not None
        victim = await server.start_kernel()
        attacker = await server.start_kernel()
        await victim_loop(server, victim, 1.0)  # warm-up
        baseline = rss_mb(server.proc.pid)
        progress(f"hostile: quiet phase, {seconds:g}s")
        with Sampler(server.proc.pid) as quiet_rss:
            quiet = await victim_loop(server, victim, seconds)
        progress(f"hostile: attack phase, {seconds:g}s, {SOCKETS} sockets")
        attack = Attack(server, attacker)
        with Sampler(server.proc.pid) as attack_rss:
            attacked, _ = await asyncio.gather(
                victim_loop(server, victim, seconds), attack.run(seconds)
            )
        progress(
            f"hostile: {attack.frames} frames sent, {attack.closed_by_gateway} sockets closed"
            f" by the gateway, peak RSS {attack_rss.peak:.0f} MB (baseline {baseline:.0f} MB)"
        )
        rows += [
            measurement(
                NAME,
                "gateway RSS growth over the quiet baseline",
                "quiet",
                [quiet_rss.peak - baseline],
                "MB",
                note="peak during the phase minus the baseline",
            ),
            measurement(
                NAME,
                "gateway RSS growth over the quiet baseline",
                "attack",
                [attack_rss.peak - baseline],
                "MB",
                target=Target.below(RSS_GROWTH_TARGET_MB, "MB"),
                note=f"{attack.frames} frames of 10/6 MiB on {SOCKETS} sockets",
            ),
        ]
        rows += comparison(
            NAME,
            "victim execute latency",
            {"quiet": quiet, "attack": attacked},
            "ms",
            baseline="quiet",
            target=Target.ratio_at_most(LATENCY_RATIO_TARGET),
            note=f"{len(quiet)} quiet, {len(attacked)} attacked executes",
        )
        rows.append(
            measurement(
                NAME,
                "attacker sockets the gateway closed",
                "attack",
                [float(attack.closed_by_gateway)],
                "count",
                note="1009: frame over the cap, or the user's held bytes over the cap",
            )
        )
    except Exception as e:
        rows.append(error_row(NAME, "hold", f"{type(e).__name__}: {e}"))
    finally:
        with contextlib.suppress(Exception):
            for problem in await stop_all([server]):
                rows.append(error_row(NAME, "hold: cleanup", problem))
    return rows


BENCHMARKS = [
    Benchmark(
        "hold",
        f"{SOCKETS} websockets flooded during a restart hold: gateway RSS and a second"
        " tenant's execute latency, attack vs quiet",
        bench_hold,
    ),
]
