"""Hub scenario: what JupyterHub mode costs, measured against a real JupyterHub.

A JupyterHub (PyPI's, with npm's configurable-http-proxy, on loopback) serves the
gateway's users; its single-user servers are a stand-in that answers 200
(``bench/hub_stub_server.py``), so fifty users can have running servers.

* ``auth``    -- ``GET /api/kernelspecs`` (a request that does little besides being
                 authenticated) with one user's token: users-file mode vs Hub mode with
                 a warm cache, interleaved ABBA. Target: ratio <= 1.1.
* ``traffic`` -- 200 (quick: 40) idle kernels of 50 (quick: 10) users, each started
                 with the token of the user's running server (the minimal kernel,
                 ``bench/minimal_kernel.py``, as each user's own OS account
                 ``ko-hubNN``); then every Hub API call the gateway makes in a window
                 of several reconciliation intervals, counted by the Hub itself
                 (``/hub/metrics``, per API handler). Target: one listing per
                 interval, whatever the number of kernels; no token checks and no
                 activity posts while nothing happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench.harness import (
    Benchmark,
    Context,
    Row,
    Target,
    abba,
    comparison,
    error_row,
    progress,
    reap,
)
from bench.scenarios.gateway import Server, stop_all

NAME = "hub"
DESCRIPTION = (
    "JupyterHub mode: authentication cost with a warm cache vs the users file;"
    " Hub API calls with 200 idle kernels of 50 users"
)

KERNEL = "bench-minimal"
MINIMAL = str(Path(__file__).resolve().parents[1] / "minimal_kernel.py")
STUB = str(Path(__file__).resolve().parents[1] / "hub_stub_server.py")
AUTH_RATIO_TARGET = 1.1
SERVICE = "kernel-gateway"


class HubServer(Server):
    """``kernel-orchestrator serve`` as a Hub service (Hub mode detected from its env)."""

    def __init__(
        self, label: str, root: Path, hub: Any, service_token: str, extra: tuple[str, ...]
    ) -> None:
        super().__init__("ours", label, root, extra)
        self.hub_env = {
            "JUPYTERHUB_SERVICE_NAME": SERVICE,
            "JUPYTERHUB_API_URL": hub.api_url,
            "JUPYTERHUB_API_TOKEN": service_token,
        }

    def _env(self) -> dict[str, str]:
        return {**super()._env(), **self.hub_env}


def _kernelspec(ctx: Context) -> None:
    from tests.conftest import write_kernelspec

    write_kernelspec(
        str(ctx.root / "data"),
        KERNEL,
        "orchestrator-local-provisioner",
        {"transport_encryption": "disabled"},  # (the stand-in kernel speaks no CurveZMQ)
        argv=[sys.executable, MINIMAL, "-f", "{connection_file}"],
    )


@contextlib.asynccontextmanager
async def _hub(ctx: Context, gateway_port: int, service_token: str) -> Any:
    from tests.browser import ensure_browser
    from tests.jupyterhub import JupyterHub

    node_modules = await asyncio.to_thread(ensure_browser)
    hub = JupyterHub(
        ctx.root,
        node_modules,
        f"http://127.0.0.1:{gateway_port}",
        service_token,
        singleuser_cmd=[sys.executable, STUB],
    )
    await asyncio.to_thread(hub.start)
    try:
        yield hub
    finally:
        await asyncio.to_thread(hub.shut_down)


async def _get(server: Server, token: str, path: str) -> float:
    from tornado.httpclient import HTTPRequest

    request = HTTPRequest(
        server.base + path, headers={"Authorization": f"token {token}"}, request_timeout=30
    )
    started = time.perf_counter()
    response = await server.http.fetch(request, raise_error=False)
    elapsed = time.perf_counter() - started
    if response.code != 200:
        raise RuntimeError(f"{server.label}: GET {path} -> {response.code}")
    return elapsed


# ------------------------------------------------------------------------- 1. auth


async def bench_auth(ctx: Context) -> list[Row]:
    reps, block = (6, 25) if ctx.quick else (12, 50)
    service_token = "gateway-" + secrets.token_hex(16)
    user_token = "alice-" + secrets.token_hex(16)
    users = ctx.root / "users.json"
    users.write_text(json.dumps({user_token: "alice"}))
    users.chmod(0o600)
    plain = Server("ours", "users-file", ctx.root, ("--users-file", str(users)))
    rows: list[Row] = []
    servers: list[Server] = [plain]
    try:
        async with _hub(ctx, 0, service_token) as hub:
            hubbed = HubServer("hub-auth", ctx.root, hub, service_token, ())
            servers.append(hubbed)
            await asyncio.gather(plain.start(), hubbed.start())
            await asyncio.to_thread(hub.create_user, "alice")
            hub_token = await asyncio.to_thread(hub.user_token, "alice")
            tokens = {"users file": user_token, "hub (warm cache)": hub_token}
            by_variant = {"users file": plain, "hub (warm cache)": hubbed}
            samples: dict[str, list[float]] = {v: [] for v in by_variant}
            for variant in by_variant:  # warm-up: connections, the Hub's first answer
                for _ in range(10):
                    await _get(by_variant[variant], tokens[variant], "/api/kernelspecs")
            progress(f"hub: auth, {reps} blocks of {block} requests per variant")
            for rep in range(reps):
                for variant in abba(rep, list(by_variant)):
                    for _ in range(block):
                        samples[variant].append(
                            await _get(by_variant[variant], tokens[variant], "/api/kernelspecs")
                        )
            rows += comparison(
                NAME,
                "GET /api/kernelspecs (authentication)",
                samples,
                "ms",
                baseline="users file",
                target=Target.ratio_at_most(AUTH_RATIO_TARGET),
                note="same request, same user; the Hub asked once per cache_seconds",
            )
    except Exception as e:
        rows.append(error_row(NAME, "auth", f"{type(e).__name__}: {e}"))
    finally:
        with contextlib.suppress(Exception):
            for problem in await stop_all(servers):
                rows.append(error_row(NAME, "auth: cleanup", problem))
    return rows


# ---------------------------------------------------------------------- 2. traffic


def _api_counts(hub: Any) -> dict[str, float]:
    """The Hub's own count of API requests, per handler (its Prometheus metrics)."""
    with urllib.request.urlopen(f"{hub.url}/hub/metrics", timeout=30) as response:
        text = response.read().decode()
    counts: dict[str, float] = {}
    pattern = r"^jupyterhub_request_duration_seconds_count\{([^}]*)\}\s+([0-9.e+]+)"
    for labels, value in re.findall(pattern, text, re.M):
        handler = re.search(r'handler="([^"]+)"', labels)
        if handler and "api" in handler.group(1).lower():
            counts[handler.group(1)] = counts.get(handler.group(1), 0) + float(value)
    return counts


async def bench_traffic(ctx: Context) -> list[Row]:
    from tests.accounts import host_kernel_accounts

    users_n, per_user = (10, 4) if ctx.quick else (50, 4)
    interval = 5.0 if ctx.quick else 10.0
    rounds = 3 if ctx.quick else 6
    service_token = "gateway-" + secrets.token_hex(16)
    names = [f"hub{i:02d}" for i in range(users_n)]
    _kernelspec(ctx)
    rows: list[Row] = []
    try:
        with host_kernel_accounts(tuple(f"ko-{n}" for n in names)):
            async with _hub(ctx, 0, service_token) as hub:
                gateway = HubServer(
                    "hub-traffic",
                    ctx.root,
                    hub,
                    service_token,
                    (
                        "--host-kernels",
                        f"{KERNEL}=ko-{{username}}",
                        f"--max-kernels-per-user={per_user}",
                        "--",
                        f"--HubLifetime.interval={interval:g}",
                        f"--HubLifetime.activity_interval={interval:g}",
                    ),
                )
                try:  # (kernels stop while their accounts and the Hub are still there)
                    rows += await _traffic(gateway, hub, names, per_user, interval, rounds)
                finally:
                    for problem in await stop_all([gateway]):
                        rows.append(error_row(NAME, "traffic: cleanup", problem))
    except Exception as e:
        rows.append(error_row(NAME, "traffic", f"{type(e).__name__}: {e}"))
    finally:
        if left := _account_kernels(names):
            reap(left)
            rows.append(error_row(NAME, "traffic: cleanup", f"{len(left)} kernels left"))
    return rows


def _account_kernels(names: list[str]) -> list[int]:
    """Stand-in kernels still running as the benchmark's own accounts (their connection
    files are in private directories, not in the run's tree)."""
    found: list[int] = []
    for name in names:
        out = subprocess.run(
            ["pgrep", "-u", f"ko-{name}", "-f", "minimal_kernel"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        found += [int(pid) for pid in out.split()]
    return found


async def _traffic(
    gateway: Server, hub: Any, names: list[str], per_user: int, interval: float, rounds: int
) -> list[Row]:
    await gateway.start()
    kernels = len(names) * per_user
    progress(f"hub: traffic, {len(names)} servers, {kernels} kernels")
    tokens = []
    for name in names:
        await asyncio.to_thread(hub.start_server, name)
        tokens.append(await asyncio.to_thread(hub.server_token, name))
    semaphore = asyncio.Semaphore(8)

    async def start(token: str) -> None:
        async with semaphore:
            code, body = await _post_kernel(gateway, token)
            if code != 201:
                raise RuntimeError(f"start -> {code} {body!r}")

    await asyncio.gather(*(start(t) for t in tokens for _ in range(per_user)))
    await asyncio.sleep(interval * 1.5)  # past the first round and activity post
    before = await asyncio.to_thread(_api_counts, hub)
    window = interval * rounds
    progress(f"hub: traffic, counting Hub API calls for {window:g}s")
    await asyncio.sleep(window)
    after = await asyncio.to_thread(_api_counts, hub)
    calls = {h: after.get(h, 0) - before.get(h, 0) for h in after}
    listings = sum(v for h, v in calls.items() if "UserList" in h)
    by_handler = ", ".join(f"{h.rsplit('.', 1)[-1]}={v:g}" for h, v in sorted(calls.items()) if v)
    return [
        Row(
            NAME,
            f"Hub API calls per interval, {kernels} idle kernels",
            "hub",
            "calls",
            [listings / rounds],
            target=Target.at_most(1.0, "calls"),
            note=f"interval {interval:g}s, {rounds} intervals; by handler: {by_handler}",
        ).finish(),
        Row(
            NAME,
            f"Hub API calls per minute, {kernels} idle kernels",
            "hub",
            "calls/min",
            [sum(calls.values()) * 60 / window],
            note=f"all kinds, at {interval:g}s intervals (30 s by default)",
        ).finish(),
    ]


async def _post_kernel(server: Server, token: str) -> tuple[int, Any]:
    from tornado.httpclient import HTTPRequest

    request = HTTPRequest(
        server.base + "/api/kernels",
        method="POST",
        headers={"Authorization": f"token {token}"},
        body=json.dumps({"name": KERNEL}),
        request_timeout=120,
    )
    response = await server.http.fetch(request, raise_error=False)
    return response.code, response.body[:300]


BENCHMARKS = [
    Benchmark("auth", "authentication per request: Hub (warm cache) vs users file", bench_auth),
    Benchmark("traffic", "Hub API calls with idle kernels of many users", bench_traffic),
]
