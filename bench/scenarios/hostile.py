"""Hostile scenario: a tenant who floods their websockets while their kernel restarts.

One ``kernel-orchestrator serve`` (its defaults: 1 MiB frames; per user 24 websockets,
16 MiB held and 16 MiB/s sent) serves two kernels. The *attacker* opens 50 websockets on
theirs, kills it (``os._exit``: the auto-restarter brings it back, and every socket
holds what it is sent meanwhile) and sends on every socket, reopening each one the
gateway closes: 10 MiB frames (over the frame cap) for half the attack, then 1000 KiB
frames (under it, into the hold) for the other half. The *victim* executes ``1`` in a
loop on the other kernel, during a quiet phase and during the attack.

Reported: the gateway's RSS growth over its quiet baseline (peak during each phase;
target < 100 MB), the victim's execute latency during the attack beside the quiet
phase (median ratio; target < 1.5), and how many attacker sockets the gateway closed.
Both phases run in one process, side by side. The attacker (alice) and the victim
(bob) are tenants of a users file, with host kernels under their own OS accounts
(``ko-alice``, ``ko-bob``, made for the run if missing: the benchmark needs root).
The attacker's 50 sockets meet the per-user websocket cap too, and are reopened.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import sys
import time
import typing as t
import uuid
from pathlib import Path
from typing import Any

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
BIG_FRAME = 10 * 1024 * 1024  # over the gateway's 1 MiB frame cap
HELD_FRAME = 1000 * 1024  # under it: goes into the restart hold
RSS_GROWTH_TARGET_MB = 100.0
LATENCY_RATIO_TARGET = 1.5
MAX_FRAMES = 2000  # every frame the attack may send, in all
MAX_REOPENS = 500
_FRAMES = {True: "x" * BIG_FRAME, False: "x" * HELD_FRAME}  # built once


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


async def victim_loop(server: Server, token: str, kernel: str, seconds: float) -> list[float]:
    """Execute ``1`` back to back for ``seconds``; each execute's latency."""
    conn = await ws_open(server.base, token, kernel, WS_TIMEOUT)
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


async def start_kernel_as(server: Server, token: str) -> str:
    from tornado.httpclient import HTTPRequest

    request = HTTPRequest(
        server.base + "/api/kernels",
        method="POST",
        headers={"Authorization": f"token {token}"},
        body=json.dumps({"name": "python3"}),
        request_timeout=120,
    )
    response = await server.http.fetch(request)
    return str(json.loads(response.body)["id"])


class Attack:
    """50 sockets on the attacker's kernel, each sending frames while the attack runs."""

    def __init__(self, server: Server, token: str, kernel: str) -> None:
        self.server, self.token, self.kernel = server, token, kernel
        self.frames = 0
        self.closed_by_gateway = 0
        self.reopens = 0
        self.refused = 0
        self._began = time.monotonic()

    async def _socket(self, end: float) -> None:
        """Send frames until the end, reopening the socket whenever the gateway closes
        or refuses it (at most MAX_REOPENS times over all sockets)."""
        conn: Any = None
        try:
            while time.monotonic() < end and self.frames < MAX_FRAMES:
                if conn is None:
                    if self.reopens >= MAX_REOPENS:
                        return
                    self.reopens += 1
                    try:
                        conn = await ws_open(self.server.base, self.token, self.kernel, WS_TIMEOUT)
                    except Exception:  # refused (the per-user cap): try again shortly
                        self.refused += 1
                        await asyncio.sleep(0.2)
                        continue
                half = time.monotonic() < end - (end - self._began) / 2
                try:
                    await conn.write_message(_FRAMES[half])
                    self.frames += 1
                except Exception:  # the gateway closed it
                    self.closed_by_gateway += 1
                    conn = None
                await asyncio.sleep(0.01)
        finally:
            if conn is not None:
                conn.close()

    async def run_elsewhere(self, seconds: float) -> None:
        """The attack in a process of its own: its client work (building and masking
        the frames) must not slow the victim's client, which shares this event loop."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.scenarios.hostile",
            "--attack",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=str(Path(__file__).resolve().parents[2]),
        )
        request = json.dumps(
            {"base": self.server.base, "token": self.token, "kernel": self.kernel, "s": seconds}
        )
        out, _ = await asyncio.wait_for(proc.communicate(request.encode()), seconds + 120)
        summary = json.loads(out.decode().strip().splitlines()[-1])
        self.frames = summary["frames"]
        self.closed_by_gateway = summary["closed"]
        self.refused = summary["refused"]

    async def run(self, seconds: float) -> None:
        self._began = time.monotonic()
        end = self._began + seconds
        killer = await ws_open(self.server.base, self.token, self.kernel, WS_TIMEOUT)
        killer.write_message(_exit_message())
        await asyncio.sleep(0.3)  # the kernel is gone: every socket is holding now
        killer.close()
        await asyncio.gather(*(self._socket(end) for _ in range(SOCKETS)))


def _exit_message() -> str:
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
    from tests.accounts import host_kernel_accounts

    seconds = 6.0 if ctx.quick else 12.0
    alice, bob = "alice-" + secrets.token_hex(16), "bob-" + secrets.token_hex(16)
    root = ctx.root / "hostile"
    root.mkdir(parents=True, exist_ok=True)
    users = root / "users.json"
    users.write_text(json.dumps({alice: "alice", bob: "bob"}))
    users.chmod(0o600)
    server = Server(
        "ours",
        "hostile",
        ctx.root,
        ("--users-file", str(users), "--host-kernels", "python3=ko-{username}"),
    )
    rows: list[Row] = []
    try:
        with host_kernel_accounts(("ko-alice", "ko-bob")):
            rows += await _hold(server, alice, bob, seconds)
    except Exception as e:
        rows.append(error_row(NAME, "hold", f"{type(e).__name__}: {e}"))
    finally:
        with contextlib.suppress(Exception):
            for problem in await stop_all([server]):
                rows.append(error_row(NAME, "hold: cleanup", problem))
    return rows


async def _hold(server: Server, alice: str, bob: str, seconds: float) -> list[Row]:
    await server.start()
    assert server.proc is not None
    victim = await start_kernel_as(server, bob)
    attacker = await start_kernel_as(server, alice)
    await victim_loop(server, bob, victim, 1.0)  # warm-up
    baseline = rss_mb(server.proc.pid)
    progress(f"hostile: quiet phase, {seconds:g}s")
    with Sampler(server.proc.pid) as quiet_rss:
        quiet = await victim_loop(server, bob, victim, seconds)
    progress(f"hostile: attack phase, {seconds:g}s, {SOCKETS} sockets")
    attack = Attack(server, alice, attacker)
    with Sampler(server.proc.pid) as attack_rss:
        attacked, _ = await asyncio.gather(
            victim_loop(server, bob, victim, seconds), attack.run_elsewhere(seconds)
        )
    progress(
        f"hostile: {attack.frames} frames sent, {attack.closed_by_gateway} sockets closed"
        f" and {attack.refused} refused by the gateway, peak RSS {attack_rss.peak:.0f} MB"
        f" (baseline {baseline:.0f} MB)"
    )
    rows = [
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
            note=f"{attack.frames} frames of 10 MiB/1000 KiB sent on {SOCKETS} sockets",
        ),
    ]
    rows += comparison(
        NAME,
        "victim execute latency",
        {"quiet": quiet, "attack": attacked},
        "ms",
        baseline="quiet",
        target=Target.ratio_at_most(LATENCY_RATIO_TARGET),
        note=f"{len(quiet)} quiet, {len(attacked)} attacked executes in {seconds:g}s each",
    )
    rows += comparison(
        NAME,
        "victim executes completed per phase",
        {"quiet": [float(len(quiet))], "attack": [float(len(attacked))]},
        "count",
        baseline="quiet",
        target=Target.ratio_at_least(1 / LATENCY_RATIO_TARGET),
    )
    rows.append(
        measurement(
            NAME,
            "attacker sockets refused (over the per-user cap)",
            "attack",
            [float(attack.refused)],
            "count",
        )
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
    return rows


BENCHMARKS = [
    Benchmark(
        "hold",
        f"{SOCKETS} websockets flooded during a restart hold: gateway RSS and a second"
        " tenant's execute latency, attack vs quiet",
        bench_hold,
    ),
]


async def _attack_main() -> None:
    """``--attack``: run one attack as told on stdin; its counts as JSON on stdout."""
    from tornado.httpclient import AsyncHTTPClient

    request = json.loads(sys.stdin.readline())

    class _Server:
        base = request["base"]

    attack = Attack(t.cast(Server, _Server()), request["token"], request["kernel"])
    AsyncHTTPClient()
    await attack.run(float(request["s"]))
    print(
        json.dumps(
            {"frames": attack.frames, "closed": attack.closed_by_gateway, "refused": attack.refused}
        )
    )


if __name__ == "__main__" and sys.argv[1:] == ["--attack"]:
    asyncio.run(_attack_main())
