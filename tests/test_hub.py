"""JupyterHub-native tenants, with a real JupyterHub, its proxy, its idle culler and
JupyterLab single-user servers, in a real browser.

One Hub and one gateway serve the whole module (their start-ups are the slow part);
the tests run in file order, as a Hub's day goes: alice logs in through the browser
and runs a Docker kernel's cell; tokens keep users and servers apart; the Hub stops a
server or deletes a user and their kernels go; the idle culler keeps a server whose
kernel works; the Hub goes down and comes back.

The gateway runs exactly as a Hub service would (``$JUPYTERHUB_SERVICE_NAME``,
``$JUPYTERHUB_API_URL``, ``$JUPYTERHUB_API_TOKEN``: Hub mode is detected, not asked
for), and single-user servers reach it only through ``docs/jupyterhub``'s snippet.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .browser import ensure_browser, run_lab_script
from .jupyterhub import ADMIN_USER, PASSWORD, JupyterHub
from .test_gateway import ADMIN_TOKEN, Gateway, KernelSocket, call, status_of
from .test_jupyterlab import _read_until, output_dir

pytestmark = [pytest.mark.slow]

SERVICE = "kernel-gateway"
GRACE = 12.0  # HubLifetime.grace_seconds in these tests (a server restarts within it)


class HubSetup:
    def __init__(self, hub: JupyterHub, gateway: Gateway, node_modules: Path) -> None:
        self.hub = hub
        self.gateway = gateway
        self.node_modules = node_modules
        self.spec = ""


@pytest.fixture(scope="module")
def hubsetup(docker_engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubSetup]:
    from orchestrator.gateway.defaults import DOCKER_SPEC

    tmp = tmp_path_factory.mktemp("hub")
    node_modules = ensure_browser()
    service_token = "gateway-" + uuid.uuid4().hex
    gateway = Gateway(
        tmp,
        "--",
        "--HubLifetime.interval=1",
        f"--HubLifetime.grace_seconds={GRACE}",
        "--HubLifetime.activity_interval=2",
        "--HubIdentityProvider.cache_seconds=1",
        users=False,
    )
    hub = JupyterHub(tmp, node_modules, gateway.url, service_token)
    gateway.env = {
        **os.environ,
        "JUPYTER_DATA_DIR": str(tmp / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "JUPYTER_CONFIG_DIR": str(tmp / "config"),
        "JUPYTER_PLATFORM_DIRS": "1",
        "KERNEL_ORCHESTRATOR_STORE": f"sqlite:///{tmp / 'store' / 'kernels.db'}",
        # What a Hub gives the services it starts: Hub mode is detected from these.
        "JUPYTERHUB_SERVICE_NAME": SERVICE,
        "JUPYTERHUB_API_URL": hub.api_url,
        "JUPYTERHUB_API_TOKEN": service_token,
    }
    setup = HubSetup(hub, gateway, node_modules)
    setup.spec = DOCKER_SPEC
    try:
        hub.start()
        gateway.start()
        yield setup
    finally:
        try:
            if gateway.proc is not None and gateway.proc.poll() is None:
                asyncio.run(_shutdown_kernels(gateway))
        finally:
            hub.shut_down()
            if gateway.proc is not None and gateway.proc.poll() is None:
                gateway.kill(15)


async def _shutdown_kernels(gateway: Gateway) -> None:
    for kernel in await call(gateway.url, ADMIN_TOKEN, "GET", "/api/kernels"):
        await status_of(gateway.url, ADMIN_TOKEN, "DELETE", f"/api/kernels/{kernel['id']}")


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.3)


async def kernel_ids(setup: HubSetup, token: str) -> set[str]:
    return {k["id"] for k in await call(setup.gateway.url, token, "GET", "/api/kernels")}


async def start(setup: HubSetup, token: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    body = {"name": setup.spec, "env": env or {}}
    return dict(await call(setup.gateway.url, token, "POST", "/api/kernels", body))


@pytest.mark.timeout(600)
async def test_alice_logs_in_and_runs_a_docker_kernel_cell_in_jupyterlab(
    hubsetup: HubSetup,
) -> None:
    browser = await run_lab_script(
        hubsetup.node_modules,
        output_dir() / "jupyterhub-docker-kernel.png",
        HUB_URL=hubsetup.hub.url,
        HUB_USER="alice",
        HUB_PASSWORD=PASSWORD,
        ONE_CELL="1",
    )
    try:
        await _read_until(browser, "DONE", 400)
        assert await asyncio.wait_for(browser.wait(), 60) == 0
    finally:
        if browser.returncode is None:
            browser.kill()
            await browser.wait()
    # The kernel is alice's, of her default server, as the gateway's operator sees it.
    kernels = await call(hubsetup.gateway.url, ADMIN_TOKEN, "GET", "/api/kernels")
    assert [(k["owner"], k["server"], k["name"]) for k in kernels] == [("alice", "", hubsetup.spec)]


async def test_hub_tokens_keep_users_and_servers_apart(hubsetup: HubSetup) -> None:
    hub, url = hubsetup.hub, hubsetup.gateway.url
    await asyncio.to_thread(hub.start_server, "alice")  # (running since the browser test)
    await asyncio.to_thread(hub.start_server, "bob")
    alice = await asyncio.to_thread(hub.server_token, "alice")
    bob = await asyncio.to_thread(hub.server_token, "bob")
    # alice's token names bob as the user: the gateway decides, not the client.
    spoofed = await start(hubsetup, alice, {"KERNEL_USERNAME": "bob"})
    mine = await kernel_ids(hubsetup, alice)
    assert spoofed["id"] in mine and spoofed["owner"] == "alice"
    assert await kernel_ids(hubsetup, bob) == set()
    kid = spoofed["id"]
    for method, path in [
        ("GET", f"/api/kernels/{kid}"),
        ("POST", f"/api/kernels/{kid}/interrupt"),
        ("POST", f"/api/kernels/{kid}/restart"),
        ("DELETE", f"/api/kernels/{kid}"),
    ]:
        assert (await status_of(url, bob, method, path))[0] == 404, (method, path)
    with pytest.raises(Exception, match="404"):
        await KernelSocket.open(url, bob, kid)
    sock = await KernelSocket.open(url, alice, kid)
    try:
        reply = await sock.execute("import os; print(os.environ['KERNEL_USERNAME'])")
        assert reply["out"] == "alice\n"
    finally:
        sock.close()
    # A token of bob's without the gateway's access scope is refused, whatever else it has.
    unscoped = await asyncio.to_thread(hub.user_token, "bob", ["read:users:name!user=bob"])
    status, body = await status_of(url, unscoped, "GET", "/api/kernels")
    assert status == 403 and f"access:services!service={SERVICE}" in body["message"]
    assert (await status_of(url, "not-a-token-" + uuid.uuid4().hex, "GET", "/api/kernels"))[
        0
    ] == 403
    # A named server of alice's has its own kernels; her default server's stay apart.
    await asyncio.to_thread(hub.start_server, "alice", "second")
    second = await asyncio.to_thread(hub.server_token, "alice", "second")
    assert await kernel_ids(hubsetup, second) == set()
    other = await start(hubsetup, second)
    assert other["server"] == "second"
    assert other["id"] not in await kernel_ids(hubsetup, alice)
    assert (await status_of(url, second, "GET", f"/api/kernels/{kid}"))[0] == 404
    # A Hub admin sees every kernel, with its owner and server, and may stop them, but
    # not attach to them (that would run code as their owner).
    admin = await asyncio.to_thread(hub.user_token, ADMIN_USER)
    everything = await call(url, admin, "GET", "/api/kernels")
    owners = {(k["owner"], k["server"]) for k in everything}
    assert {("alice", ""), ("alice", "second")} <= owners
    assert (await status_of(url, admin, "GET", f"/api/kernels/{kid}"))[0] == 200
    with pytest.raises(Exception, match="404"):
        await KernelSocket.open(url, admin, kid)
    assert (await status_of(url, admin, "DELETE", f"/api/kernels/{kid}"))[0] == 200
    assert kid not in await kernel_ids(hubsetup, alice)


async def test_kernels_go_with_their_hub_server_and_user(hubsetup: HubSetup) -> None:
    hub = hubsetup.hub
    second = await asyncio.to_thread(hub.server_token, "alice", "second")
    kernel = await start(hubsetup, second)  # started past the server: it cannot stop it
    # The server restarts (a new process, a new token) within the grace: it lists its
    # kernel and drives it, and the kernel stays.
    await asyncio.to_thread(hub.stop_server, "alice", "second")
    await asyncio.to_thread(hub.start_server, "alice", "second")
    restarted = await asyncio.to_thread(hub.server_token, "alice", "second")
    assert restarted != second
    assert kernel["id"] in await kernel_ids(hubsetup, restarted)
    sock = await KernelSocket.open(hubsetup.gateway.url, restarted, kernel["id"])
    try:
        assert (await sock.execute("print('still here')"))["out"] == "still here\n"
    finally:
        sock.close()
    await asyncio.sleep(GRACE + 2)
    assert kernel["id"] in await kernel_ids(hubsetup, ADMIN_TOKEN)
    stopped = time.monotonic()
    await asyncio.to_thread(hub.stop_server, "alice", "second")

    async def gone(kernel_id: str = kernel["id"]) -> bool:
        return kernel_id not in await kernel_ids(hubsetup, ADMIN_TOKEN)

    await wait_for(gone, GRACE + 30, "the stopped server's kernels to be shut down")
    assert time.monotonic() - stopped >= GRACE  # (not before the grace period)
    # A user the Hub deletes loses their kernels too.
    await asyncio.to_thread(hub.start_server, "carol")
    carol = await asyncio.to_thread(hub.server_token, "carol")
    theirs = await start(hubsetup, carol)
    await asyncio.to_thread(hub.api, "DELETE", "users/carol")
    await wait_for(
        lambda: gone(theirs["id"]), GRACE + 30, "the deleted user's kernels to be shut down"
    )
    # ... and is revoked: a kernel of theirs that reconnects gets no SSH certificate
    # (the refusal itself: test_ssh's certificate test).
    assert "tenant carol is revoked" in hubsetup.gateway.log.read_text()


@pytest.mark.timeout(300)
async def test_a_working_kernel_keeps_its_server_from_the_idle_culler(
    hubsetup: HubSetup,
) -> None:
    hub, url = hubsetup.hub, hubsetup.gateway.url
    alice = await asyncio.to_thread(hub.server_token, "alice")
    bob = await asyncio.to_thread(hub.server_token, "bob")
    busy = await start(hubsetup, alice)
    idle = await start(hubsetup, bob)
    sock = await KernelSocket.open(url, alice, busy["id"])
    work = sock.send(
        "execute_request",
        {"code": "import time; time.sleep(240)", "silent": False, "store_history": False},
    )
    assert work

    async def alice_reported() -> bool:  # the gateway posted her server's activity
        server = await asyncio.to_thread(hub.server, "alice")
        stamp = dt.datetime.fromisoformat(server["last_activity"].replace("Z", "+00:00"))
        return (dt.datetime.now(dt.timezone.utc) - stamp).total_seconds() < 5

    await wait_for(alice_reported, 30, "the gateway to post the busy kernel's activity")
    culler = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterhub_idle_culler",
            f"--url={hub.api_url}",
            "--timeout=20",
            "--cull-every=4",
        ],
        env={**os.environ, "JUPYTERHUB_API_TOKEN": hub.culler_token},
        stdout=subprocess.DEVNULL,
        stderr=open(hub.dir / "idle-culler.log", "ab"),  # noqa: SIM115
    )
    try:
        started = time.monotonic()

        async def bob_culled() -> bool:
            return await asyncio.to_thread(hub.server, "bob") is None

        await wait_for(bob_culled, 90, "the idle culler to stop bob's idle server")
        # alice's server, whose kernel works, stays at least a whole timeout longer.
        while time.monotonic() - started < 45:
            assert await asyncio.to_thread(hub.server, "alice") is not None
            await asyncio.sleep(1)

        async def idle_gone() -> bool:
            return idle["id"] not in await kernel_ids(hubsetup, ADMIN_TOKEN)

        await wait_for(idle_gone, GRACE + 30, "bob's kernel to go with his server")
    finally:
        culler.terminate()
        culler.wait(30)
        sock.send("interrupt_request", {}, channel="control")
        sock.close()
    await call(url, alice, "DELETE", f"/api/kernels/{busy['id']}")


async def test_hub_down_keeps_kernels_and_known_tokens_working(hubsetup: HubSetup) -> None:
    hub, url = hubsetup.hub, hubsetup.gateway.url
    alice = await asyncio.to_thread(hub.server_token, "alice")
    kernel = await start(hubsetup, alice)  # alice's token is known to the gateway now
    fresh = await asyncio.to_thread(hub.user_token, "alice")  # never shown to the gateway
    sock = await KernelSocket.open(url, alice, kernel["id"])
    try:
        await asyncio.to_thread(hub.stop)
        await asyncio.sleep(1.5)  # past HubIdentityProvider.cache_seconds
        assert (await sock.execute("print(6 * 7)"))["out"] == "42\n"
        assert kernel["id"] in await kernel_ids(hubsetup, alice)
        status, body = await status_of(url, fresh, "GET", "/api/kernels")
        assert status == 503 and "JupyterHub" in body["message"]
        await asyncio.sleep(GRACE + 3)  # no kernel is stopped for a Hub it cannot ask
        assert kernel["id"] in await kernel_ids(hubsetup, ADMIN_TOKEN)
        await asyncio.to_thread(hub.start)
        assert kernel["id"] in await kernel_ids(hubsetup, fresh)
        assert (await sock.execute("print(7 * 6)"))["out"] == "42\n"
    finally:
        sock.close()
    await call(url, alice, "DELETE", f"/api/kernels/{kernel['id']}")
