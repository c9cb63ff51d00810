"""Gateway replicas over one PostgreSQL store, behind nginx, driven by Jupyter Server.

Three ``kernel-orchestrator serve`` processes share a real PostgreSQL server (Debian's,
started by the tests) and sit behind Debian's nginx as a round-robin load balancer
with WebSocket proxying. Clients, a real Jupyter Server with ``--gateway-url`` among
them, only ever talk to nginx, so every request may land on any replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError

from .nginx import Nginx
from .test_gateway import (
    ADMIN_TOKEN,
    CLI,
    Gateway,
    JupyterServer,
    KernelSocket,
    call,
    status_of,
)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("jupyter_env")]

# What a client sees when the replica behind its WebSocket dies.
DROPPED = (
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
    TimeoutError,
    WebSocketClosedError,
    StreamClosedError,
)


class Replicas:
    """N gateway replicas on one store, and nginx in front of them."""

    def __init__(self, tmp: Path, store_url: str, count: int = 3, *extra: str) -> None:
        self.gateways: list[Gateway] = []
        for n in range(count):
            home = tmp / f"replica{n}"
            home.mkdir()
            self.gateways.append(Gateway(home, "--store", store_url, *extra, users=False))
        self.nginx = Nginx([g.port for g in self.gateways])
        self.store_url = store_url

    def start(self) -> Replicas:
        for gw in self.gateways:
            gw.start()
        self.nginx.start()
        return self

    @property
    def url(self) -> str:
        return self.nginx.url

    def holder_of(self, record: Any) -> Gateway:
        """The replica whose process owns the kernel's lease."""
        pid = record.owner.get("pid")
        for gw in self.gateways:
            if gw.proc is not None and gw.proc.pid == pid:
                return gw
        raise AssertionError(f"no replica holds {record.kernel_id}: owner {record.owner}")

    def stop(self) -> None:
        self.nginx.stop()
        for gw in self.gateways:
            if gw.proc is not None and gw.proc.poll() is None:
                gw.kill(signal.SIGTERM)


@pytest.fixture
def replicas(tmp_path: Path, pg_store_url: str) -> Iterator[Replicas]:
    group = Replicas(tmp_path, pg_store_url).start()
    try:
        yield group
    finally:
        try:
            asyncio.run(_shutdown_everything(group))
        finally:
            group.stop()


async def _shutdown_everything(group: Replicas) -> None:
    live = next(g for g in group.gateways if g.proc is not None and g.proc.poll() is None)
    for k in await call(live.url, ADMIN_TOKEN, "GET", "/api/kernels"):
        await status_of(live.url, ADMIN_TOKEN, "DELETE", f"/api/kernels/{k['id']}")


def store_record(url: str, kernel_id: str) -> Any:
    from orchestrator.store import open_store

    store = open_store(url)
    try:
        return asyncio.run(store.get(kernel_id))
    finally:
        store.close()


async def record_of(url: str, kernel_id: str) -> Any:
    return await asyncio.to_thread(store_record, url, kernel_id)


async def execute_retrying(ws: KernelSocket, code: str, deadline: float) -> dict[str, Any]:
    """Execute through a socket whose far end may be failing over: a request lost in
    the switch is sent again until the deadline."""
    while True:
        try:
            return await ws.execute(code, timeout=max(0.5, min(5, deadline - time.monotonic())))
        except (asyncio.TimeoutError, TimeoutError):
            if time.monotonic() > deadline:
                raise


async def test_every_replica_serves_every_kernel(replicas: Replicas) -> None:
    kernel = await call(replicas.url, ADMIN_TOKEN, "POST", "/api/kernels", {"name": "python3"})
    kid = kernel["id"]
    ws = await KernelSocket.open(replicas.gateways[0].url, ADMIN_TOKEN, kid)
    assert (await ws.execute("shared = 41"))["status"] == "ok"
    ws.close()
    for gw in replicas.gateways:  # each replica directly, never a 404
        model = await call(gw.url, ADMIN_TOKEN, "GET", f"/api/kernels/{kid}")
        assert model["id"] == kid
        listed = await call(gw.url, ADMIN_TOKEN, "GET", "/api/kernels")
        assert [k["id"] for k in listed] == [kid]
        ws = await KernelSocket.open(gw.url, ADMIN_TOKEN, kid)
        try:
            assert (await ws.execute("shared += 1; print(shared)"))["out"].strip().isdigit()
        finally:
            ws.close()
    # Lifecycle work through a replica that does not hold the lease takes it over.
    record = await record_of(replicas.store_url, kid)
    other = next(g for g in replicas.gateways if g is not replicas.holder_of(record))
    await call(other.url, ADMIN_TOKEN, "POST", f"/api/kernels/{kid}/interrupt")
    record = await record_of(replicas.store_url, kid)
    assert replicas.holder_of(record) is other
    await call(replicas.url, ADMIN_TOKEN, "DELETE", f"/api/kernels/{kid}")
    for gw in replicas.gateways:
        assert (await status_of(gw.url, ADMIN_TOKEN, "GET", f"/api/kernels/{kid}"))[0] == 404


async def test_failover_after_kill_9_of_the_holder(replicas: Replicas, tmp_path: Path) -> None:
    js = JupyterServer(replicas.gateways[0], tmp_path, url=replicas.url, auth_token=ADMIN_TOKEN)
    try:
        base, token = js.url, js.token
        kernel = await call(base, token, "POST", "/api/kernels", {"name": "python3"})
        kid = kernel["id"]
        ws = await KernelSocket.open(base, token, kid)
        try:
            assert (await ws.execute("state = 'kept'; print(state)"))["out"] == "kept\n"
            holder = replicas.holder_of(await record_of(replicas.store_url, kid))
            holder.kill(signal.SIGKILL)
            killed = time.monotonic()
            reply = await execute_retrying(ws, "print(state)", killed + 60)
            assert reply["out"] == "kept\n"
        finally:
            ws.close()
        restarted = await call(base, token, "POST", f"/api/kernels/{kid}/restart")
        assert restarted["id"] == kid
        record = await record_of(replicas.store_url, kid)
        assert replicas.holder_of(record) is not holder and record.restarts == 1
        ws = await KernelSocket.open(base, token, kid)
        try:
            reply = await execute_retrying(
                ws, "print('fresh' if 'state' not in dir() else state)", time.monotonic() + 60
            )
            assert reply["out"] == "fresh\n"
        finally:
            ws.close()
        await call(base, token, "DELETE", f"/api/kernels/{kid}")
        assert await record_of(replicas.store_url, kid) is None
    finally:
        js.stop()


async def test_load_with_a_replica_killed_mid_run(replicas: Replicas) -> None:
    kernels = [
        (await call(replicas.url, ADMIN_TOKEN, "POST", "/api/kernels", {"name": "python3"}))["id"]
        for _ in range(10)
    ]
    rounds, failures, reconnects = 12, [], [0]
    halfway = asyncio.Event()

    async def client(n: int) -> None:
        kid = kernels[n % len(kernels)]
        ws = await KernelSocket.open(replicas.url, ADMIN_TOKEN, kid)

        async def run(code: str) -> dict[str, Any]:
            nonlocal ws
            deadline = time.monotonic() + 60
            while True:
                try:
                    return await ws.execute(code, timeout=10)
                except DROPPED:
                    if time.monotonic() > deadline:
                        raise
                    ws.close()  # the client's own job: reconnect, send again
                    await asyncio.sleep(0.2)
                    reconnects[0] += 1
                    with contextlib.suppress(*DROPPED, HTTPClientError):
                        ws = await KernelSocket.open(replicas.url, ADMIN_TOKEN, kid)

        try:
            await run(f"c{n} = 0")
            for i in range(rounds):
                if i == rounds // 2:
                    halfway.set()
                reply = await run(f"c{n} = {i + 1}; print(c{n})")
                if reply["status"] != "ok" or reply["out"] != f"{i + 1}\n":
                    failures.append((n, i, reply))
                await asyncio.sleep(0.05)
        finally:
            ws.close()

    async def killer() -> None:
        await halfway.wait()
        await asyncio.to_thread(replicas.gateways[1].kill, signal.SIGKILL)

    await asyncio.wait_for(asyncio.gather(killer(), *(client(n) for n in range(20))), 600)
    assert failures == []
    listed = await call(replicas.url, ADMIN_TOKEN, "GET", "/api/kernels")
    assert sorted(k["id"] for k in listed) == sorted(kernels)


async def test_store_restart_loses_no_record(replicas: Replicas, postgres: Any) -> None:
    kernels = [
        (await call(replicas.url, ADMIN_TOKEN, "POST", "/api/kernels", {"name": "python3"}))["id"]
        for _ in range(3)
    ]
    ws = await KernelSocket.open(replicas.url, ADMIN_TOKEN, kernels[0])
    try:
        assert (await ws.execute("during = 1"))["status"] == "ok"
        await asyncio.to_thread(postgres.stop, kill=True)  # a crash, not a clean stop
        try:
            # While it is down: kernel traffic never needed the store, and requests
            # that do get a prompt 503 naming it, and readiness says not ready.
            assert (await ws.execute("print(during)"))["out"] == "1\n"
            code, body = await status_of(replicas.url, ADMIN_TOKEN, "GET", "/api/kernels")
            assert code == 503 and "kernel store" in body["message"], body
            gw = replicas.gateways[0]
            assert (await status_of(gw.url, ADMIN_TOKEN, "GET", "/readyz"))[0] == 503
        finally:
            await asyncio.to_thread(postgres.start)
        assert (await ws.execute("print(during + 1)"))["out"] == "2\n"
    finally:
        ws.close()
    deadline = time.monotonic() + 60
    while True:  # each replica's next store call connects again
        codes = [
            (await status_of(g.url, ADMIN_TOKEN, "GET", "/readyz"))[0] for g in replicas.gateways
        ]
        if codes == [200, 200, 200] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert codes == [200, 200, 200]
    listed = await call(replicas.url, ADMIN_TOKEN, "GET", "/api/kernels")
    assert sorted(k["id"] for k in listed) == sorted(kernels)
    new = await call(replicas.url, ADMIN_TOKEN, "POST", "/api/kernels", {"name": "python3"})
    assert len(await call(replicas.url, ADMIN_TOKEN, "GET", "/api/kernels")) == 4
    for kid in [*kernels, new["id"]]:
        record = await record_of(replicas.store_url, kid)
        assert record is not None and record.owner, kid


async def test_limits_and_pools_count_across_replicas(tmp_path: Path, pg_store_url: str) -> None:
    group = Replicas(
        tmp_path, pg_store_url, 3, "--max-kernels", "4", "--warm-pool", "python3=2"
    ).start()
    try:
        deadline = time.monotonic() + 120
        from orchestrator.store import open_store

        store = open_store(pg_store_url)
        try:
            while await store.count(pool="python3") < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            # Three replicas filled one pool of two between them.
            await asyncio.sleep(2)
            assert await store.count(pool="python3") == 2
            assert len(await store.list()) == 2
        finally:
            store.close()
        results = await asyncio.gather(
            *(
                status_of(g.url, ADMIN_TOKEN, "POST", "/api/kernels", {"name": "python3"})
                for g in group.gateways * 3
            )
        )
        codes = sorted(code for code, _ in results)
        assert codes == [200] * 4 + [429] * 5, results
        ids = [body["id"] for code, body in results if code == 200]
        assert len(set(ids)) == 4  # no pooled kernel handed out twice
    finally:
        try:
            await _shutdown_everything(group)
        finally:
            group.stop()


async def test_a_dead_replicas_kernels_are_taken_over_when_its_lease_expires(
    docker_engine: str, tmp_path: Path, pg_store_url: str
) -> None:
    """Replica B runs in a pid namespace of its own, as on another machine: it cannot
    see that A died, so it takes A's kernels over only once A's leases expire, with
    no request asking. A local kernel of A's stays A's machine's: B refuses it rather
    than judge it gone by a pid that means nothing there."""
    from orchestrator.gateway.defaults import DOCKER_SPEC

    env = {**os.environ, "KERNEL_ORCHESTRATOR_LEASE_SECONDS": "3"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Gateway(tmp_path / "a", "--store", pg_store_url, users=False)
    b = Gateway(tmp_path / "b", "--store", pg_store_url, users=False)
    for gw in (a, b):
        gw.env = env
    b.wrapper = ["unshare", "--pid", "--fork", "--kill-child", "--"]
    try:
        a.start()
        b.start()
        docker_kernel = await call(
            a.url, ADMIN_TOKEN, "POST", "/api/kernels", {"name": DOCKER_SPEC}
        )
        local_kernel = await call(a.url, ADMIN_TOKEN, "POST", "/api/kernels", {"name": "python3"})
        ws = await KernelSocket.open(a.url, ADMIN_TOKEN, docker_kernel["id"])
        assert (await ws.execute("kept = 7"))["status"] == "ok"
        ws.close()
        before = await record_of(pg_store_url, docker_kernel["id"])
        a.kill(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            record = await record_of(pg_store_url, docker_kernel["id"])
            if record.owner.get("holder_id") != before.owner["holder_id"]:
                break
            await asyncio.sleep(0.5)
        assert record.owner["holder_id"] != before.owner["holder_id"], "not taken over"
        assert record.generation == before.generation + 1
        assert record.owner["machine"] != before.owner["machine"]
        ws = await KernelSocket.open(b.url, ADMIN_TOKEN, docker_kernel["id"])
        try:
            assert (await ws.execute("print(kept)"))["out"] == "7\n"
        finally:
            ws.close()
        code, body = await status_of(
            b.url, ADMIN_TOKEN, "GET", f"/api/kernels/{local_kernel['id']}"
        )
        assert code == 503 and "another machine" in body["message"], body
        assert await record_of(pg_store_url, local_kernel["id"]) is not None
        await call(b.url, ADMIN_TOKEN, "DELETE", f"/api/kernels/{docker_kernel['id']}")
    finally:
        for gw in (a, b):
            if gw.proc is not None and gw.proc.poll() is None:
                # (unshare ignores SIGTERM; its --kill-child passes SIGKILL on)
                gw.kill(signal.SIGKILL if gw is b else signal.SIGTERM)
        await asyncio.sleep(3.5)  # B's leases lapse, so the operator's CLI may act
        # The local kernel, from its own machine (this one), as an operator would.
        subprocess.run(
            [CLI, "shutdown", "--all", "--now", "--store", pg_store_url],
            capture_output=True,
            timeout=120,
            check=False,
        )


async def test_a_local_kernel_of_a_dead_container_is_cleaned_up_by_another_replica(
    tmp_path: Path, pg_store_url: str
) -> None:
    """B is its pid namespace's init, as a gateway in a container is (under tini): its
    local kernels die with it. Once B's lease lapses, A removes such a kernel's record,
    which a pid of B's namespace cannot prove gone, instead of refusing it forever."""
    env = {**os.environ, "KERNEL_ORCHESTRATOR_LEASE_SECONDS": "3"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Gateway(tmp_path / "a", "--store", pg_store_url, users=False)
    b = Gateway(tmp_path / "b", "--store", pg_store_url, users=False)
    for gw in (a, b):
        gw.env = env
    b.wrapper = ["unshare", "--pid", "--fork", "--kill-child", "--"]
    try:
        a.start()
        b.start()
        kernel = await call(b.url, ADMIN_TOKEN, "POST", "/api/kernels", {"name": "python3"})
        assert (await record_of(pg_store_url, kernel["id"])).provisioner_info["ends_with_owner"]
        b.kill(signal.SIGKILL)  # the namespace ends, and the kernel with it
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if await record_of(pg_store_url, kernel["id"]) is None:
                break
            await asyncio.sleep(0.5)
        assert await record_of(pg_store_url, kernel["id"]) is None, "record kept"
        code, _ = await status_of(a.url, ADMIN_TOKEN, "GET", f"/api/kernels/{kernel['id']}")
        assert code == 404
    finally:
        for gw in (a, b):
            if gw.proc is not None and gw.proc.poll() is None:
                gw.kill(signal.SIGKILL if gw is b else signal.SIGTERM)
        subprocess.run(
            [CLI, "shutdown", "--all", "--now", "--force", "--store", pg_store_url],
            capture_output=True,
            timeout=120,
            check=False,
        )


def test_gateway_refuses_an_unusable_store(postgres: Any) -> None:
    env = {**os.environ, **postgres.env}
    for store, expected in (
        (f"postgresql://ko@127.0.0.1:{postgres.port + 1}/nowhere", "unreachable"),
        (postgres.url("no_such_database"), "no_such_database"),
        ("mysql://db/x", "unsupported kernel store URL scheme 'mysql'"),
    ):
        done = subprocess.run(
            [CLI, "serve", "--port", "0", "--allow-root", "--store", store],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode != 0, (store, done.stderr)
        assert expected in done.stderr, (store, done.stderr)
        assert "Traceback" not in done.stderr


@contextlib.asynccontextmanager
async def two_replicas(
    tmp_path: Path, store_url: str, *extra: str, lease_seconds: float = 0
) -> Any:
    """Replicas A and B on one store, each reached directly (no balancer: the test
    decides which replica every request goes to)."""
    env = {**os.environ}
    if lease_seconds:
        env["KERNEL_ORCHESTRATOR_LEASE_SECONDS"] = str(lease_seconds)
    pair = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        gw = Gateway(tmp_path / name, "--store", store_url, *extra, users=False)
        gw.env = env
        pair.append(gw)
    try:
        for gw in pair:
            gw.start()
        yield pair
    finally:
        live = [g for g in pair if g.proc is not None and g.proc.poll() is None]
        if live:
            for k in await call(live[0].url, ADMIN_TOKEN, "GET", "/api/kernels"):
                await status_of(live[0].url, ADMIN_TOKEN, "DELETE", f"/api/kernels/{k['id']}")
        for gw in live:
            gw.kill(signal.SIGTERM)


async def test_a_client_replica_takes_over_a_restarted_kernel_without_restarting_it(
    tmp_path: Path, pg_store_url: str
) -> None:
    """A restarts the kernel while B serves a client of it, then A dies: B takes the
    kernel over when A's lease lapses, and watches the kernel A restarted, not the
    process that restart replaced (which it would find dead and restart again)."""
    async with two_replicas(tmp_path, pg_store_url, lease_seconds=3) as (a, b):
        kid = (await call(a.url, ADMIN_TOKEN, "POST", "/api/kernels", {"name": "python3"}))["id"]
        ws = await KernelSocket.open(b.url, ADMIN_TOKEN, kid)
        try:
            assert (await ws.execute("before = 1"))["status"] == "ok"
            ws.send("execute_request", {"code": "import time; time.sleep(600)"})
            await asyncio.sleep(1)  # B saw the kernel busy: it never sees it idle again
            await call(a.url, ADMIN_TOKEN, "POST", f"/api/kernels/{kid}/restart")
            # The client keeps its websocket on B, as JupyterLab does when the restart
            # came from elsewhere (EG #903, jupyterlab#8013): B holds what it sends
            # until the new process publishes to B's iopub, so no output is lost.
            reply = await ws.execute("after = 2; print(after)", timeout=30)
            assert reply["out"] == "2\n"
            a.kill(signal.SIGKILL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                record = await record_of(pg_store_url, kid)
                if record.owner.get("pid") == b.proc.pid:  # type: ignore[union-attr]
                    break
                await asyncio.sleep(0.5)
            assert record.owner.get("pid") == b.proc.pid, record.owner  # type: ignore[union-attr]
            await asyncio.sleep(8)  # several of B's restarter polls, as owner
            record = await record_of(pg_store_url, kid)
            assert record.restarts == 1
            assert (await ws.execute("print(after)"))["out"] == "2\n"
        finally:
            ws.close()


async def test_a_lifecycle_request_on_a_replica_that_lost_the_lease_takes_it_back(
    tmp_path: Path, pg_store_url: str
) -> None:
    """Right after B took the kernel over, A still believes it holds the lease (until
    its next renewal): a request on A checks the store and takes the kernel back."""
    async with two_replicas(tmp_path, pg_store_url) as (a, b):
        kid = (await call(a.url, ADMIN_TOKEN, "POST", "/api/kernels", {"name": "python3"}))["id"]
        await call(b.url, ADMIN_TOKEN, "POST", f"/api/kernels/{kid}/interrupt")
        assert (await record_of(pg_store_url, kid)).owner["pid"] == b.proc.pid  # type: ignore[union-attr]
        code, body = await status_of(a.url, ADMIN_TOKEN, "POST", f"/api/kernels/{kid}/interrupt")
        assert code == 200, body  # (status_of reports any success as 200)
        record = await record_of(pg_store_url, kid)
        assert record.owner["pid"] == a.proc.pid and record.generation == 3  # type: ignore[union-attr]
        code, body = await status_of(a.url, ADMIN_TOKEN, "POST", f"/api/kernels/{kid}/restart")
        assert code == 200, body


async def test_the_owner_does_not_cull_a_kernel_in_use_through_another_replica(
    tmp_path: Path, pg_store_url: str
) -> None:
    """A owns the kernel and culls; B has the only client, connected and idle. B's
    saved activity keeps the kernel alive; once the client leaves, A culls it."""
    cull = ("--cull-idle-timeout", "6", "--cull-interval", "1")
    async with two_replicas(tmp_path, pg_store_url, *cull) as (a, b):
        kid = (await call(a.url, ADMIN_TOKEN, "POST", "/api/kernels", {"name": "python3"}))["id"]
        ws = await KernelSocket.open(b.url, ADMIN_TOKEN, kid)
        try:
            assert (await ws.execute("x = 1"))["status"] == "ok"
            await asyncio.sleep(15)  # well past the idle time-out
            assert (await status_of(a.url, ADMIN_TOKEN, "GET", f"/api/kernels/{kid}"))[0] == 200
            assert (await ws.execute("print(x)"))["out"] == "1\n"
        finally:
            ws.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if await record_of(pg_store_url, kid) is None:
                break
            await asyncio.sleep(1)
        assert await record_of(pg_store_url, kid) is None, "not culled once idle"


# ----------------------------------------------- remote kernels across replicas
@pytest.fixture(params=["ssh", "kubernetes"])
def remote_spec(
    request: pytest.FixtureRequest, jupyter_env: dict[str, str], tmp_path: Path
) -> Iterator[str]:
    """A kernelspec whose kernels are remote (their ports change on every restart, or
    their address does), which every replica reaches through tunnels or pod IPs of its
    own: the replica tests with local kernels cannot see a replica that fails to move."""
    from .conformance import backends
    from .conftest import write_kernelspec

    if request.param == "ssh":
        backend = backends.ssh_backend(
            request.getfixturevalue("sshnet"), str(tmp_path / "remote-kernels")
        )
    else:
        release = request.getfixturevalue("kube_release")
        backend = backends.kubernetes_backend(release.config(), lambda _: set())
    write_kernelspec(
        jupyter_env["JUPYTER_DATA_DIR"],
        "remote",
        backend.provisioner,
        backend.config,
        argv=[backend.python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
    )
    yield "remote"
    if request.param == "kubernetes":
        from .kubecluster import forget_provisioner_state

        forget_provisioner_state()


async def test_a_restart_on_one_replica_reaches_kept_websockets_on_both(
    remote_spec: str, tmp_path: Path, pg_store_url: str
) -> None:
    """A remote kernel started and restarted through replica A, with a websocket kept
    on B and one kept on A: after the restart, the next cell on each (sent once) gets
    its output. B moves its own tunnel or pod address to the new process as soon as
    its websocket loses the kernel, not at the next request."""
    async with two_replicas(tmp_path, pg_store_url) as (a, b):
        kid = (await call(a.url, ADMIN_TOKEN, "POST", "/api/kernels", {"name": remote_spec}))["id"]
        on_a = await KernelSocket.open(a.url, ADMIN_TOKEN, kid)
        on_b = await KernelSocket.open(b.url, ADMIN_TOKEN, kid)
        try:
            assert (await on_b.execute("x = 1; print('b')"))["out"] == "b\n"
            assert (await on_a.execute("print(x)"))["out"] == "1\n"
            await call(a.url, ADMIN_TOKEN, "POST", f"/api/kernels/{kid}/restart")
            assert (await on_b.execute("print('x' in dir())", timeout=120))["out"] == "False\n"
            assert (await on_a.execute("print('again')", timeout=120))["out"] == "again\n"
            record = await record_of(pg_store_url, kid)
            assert record.restarts == 1
        finally:
            on_a.close()
            on_b.close()


async def test_a_replica_killed_mid_restart_is_taken_over_and_the_client_carries_on(
    remote_spec: str, tmp_path: Path, pg_store_url: str
) -> None:
    """Replica A dies (kill -9) in the middle of restarting a remote kernel: the old
    process is gone, the new one never launched. B, which serves the client's
    websocket, takes the kernel over and brings it back; the client's next cell, sent
    once while the kernel is away, gets its output."""
    from orchestrator.faults import CRASH_ENV

    env = {**os.environ, "KERNEL_ORCHESTRATOR_LEASE_SECONDS": "3"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Gateway(tmp_path / "a", "--store", pg_store_url, users=False)
    b = Gateway(tmp_path / "b", "--store", pg_store_url, users=False)
    a.env = {**env, CRASH_ENV: "mid-restart"}
    b.env = env
    try:
        a.start()
        b.start()
        kid = (await call(a.url, ADMIN_TOKEN, "POST", "/api/kernels", {"name": remote_spec}))["id"]
        ws = await KernelSocket.open(b.url, ADMIN_TOKEN, kid)
        try:
            assert (await ws.execute("x = 1"))["status"] == "ok"
            with contextlib.suppress(HTTPClientError, *DROPPED):
                await call(a.url, ADMIN_TOKEN, "POST", f"/api/kernels/{kid}/restart")
            assert a.proc is not None and a.proc.wait(30) == -signal.SIGKILL
            reply = await ws.execute("print('x' in dir())", timeout=150)
            assert reply["out"] == "False\n"
            record = await record_of(pg_store_url, kid)
            assert record.owner.get("pid") == b.proc.pid  # type: ignore[union-attr]
        finally:
            ws.close()
        await call(b.url, ADMIN_TOKEN, "DELETE", f"/api/kernels/{kid}")
        assert await record_of(pg_store_url, kid) is None
    finally:
        for gw in (a, b):
            if gw.proc is not None and gw.proc.poll() is None:
                gw.kill(signal.SIGTERM)


async def test_replicas_with_skewed_clocks_do_not_take_each_others_kernels(
    docker_engine: str, tmp_path: Path, pg_store_url: str
) -> None:
    """B's clock runs two minutes ahead of A's (libfaketime), forty leases' worth, and
    B runs in a pid namespace of its own, as on another machine. Each keeps the
    kernels it owns, and when A dies, B takes A's kernel over once A's lease really
    lapsed: leases are written and judged by the database's clock."""
    from orchestrator.gateway.defaults import DOCKER_SPEC

    from . import debian

    debian.ensure({"faketime": "faketime"})
    env = {**os.environ, "KERNEL_ORCHESTRATOR_LEASE_SECONDS": "3"}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = Gateway(tmp_path / "a", "--store", pg_store_url, users=False)
    b = Gateway(tmp_path / "b", "--store", pg_store_url, users=False)
    a.env = env
    (libfaketime,) = sorted(Path("/usr/lib").glob("*/faketime/libfaketimeMT.so.1"))
    b.env = {
        **env,
        "LD_PRELOAD": str(libfaketime),
        "FAKETIME": "+120s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    b.wrapper = ["unshare", "--pid", "--fork", "--kill-child", "--"]
    try:
        a.start()
        b.start()
        spec = {"name": DOCKER_SPEC}  # (a local kernel stays on its own "machine")
        on_a = (await call(a.url, ADMIN_TOKEN, "POST", "/api/kernels", spec))["id"]
        on_b = (await call(b.url, ADMIN_TOKEN, "POST", "/api/kernels", spec))["id"]
        first_a = await record_of(pg_store_url, on_a)
        first_b = await record_of(pg_store_url, on_b)
        assert first_a.owner["holder_id"] != first_b.owner["holder_id"]
        await asyncio.sleep(8)  # many lease intervals and adoption scans of both
        for kid, first in ((on_a, first_a), (on_b, first_b)):
            record = await record_of(pg_store_url, kid)
            assert record.owner["holder_id"] == first.owner["holder_id"], kid
            assert record.generation == first.generation, kid
        ws = await KernelSocket.open(b.url, ADMIN_TOKEN, on_a)  # a client of A's kernel
        try:
            assert (await ws.execute("kept = 7"))["status"] == "ok"
        finally:
            ws.close()
        a.kill(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            record = await record_of(pg_store_url, on_a)
            if record.owner.get("holder_id") == first_b.owner["holder_id"]:
                break
            await asyncio.sleep(0.5)
        assert record.owner.get("holder_id") == first_b.owner["holder_id"], "not taken over"
        ws = await KernelSocket.open(b.url, ADMIN_TOKEN, on_a)
        try:
            assert (await ws.execute("print(kept)"))["out"] == "7\n"
        finally:
            ws.close()
        for kid in (on_a, on_b):
            await call(b.url, ADMIN_TOKEN, "DELETE", f"/api/kernels/{kid}")
    finally:
        for gw in (a, b):
            if gw.proc is not None and gw.proc.poll() is None:
                gw.kill(signal.SIGKILL if gw is b else signal.SIGTERM)
        # Whatever a failure left (the test deletes its kernels when it passes).
        subprocess.run(
            [CLI, "shutdown", "--all", "--now", "--force", "--store", pg_store_url],
            capture_output=True,
            timeout=120,
            check=False,
        )


async def test_concurrent_deletes_through_two_replicas_answer_204_or_404(
    tmp_path: Path, pg_store_url: str
) -> None:
    """Two clients delete the same kernels at once, through two replicas (one serving
    each kernel as a client): each DELETE answers 204 or 404, never a 500 from the
    record vanishing between the check and the take-over, and nothing is left."""
    async with two_replicas(tmp_path, pg_store_url) as (a, b):
        kids = [
            (await call(a.url, ADMIN_TOKEN, "POST", "/api/kernels", {"name": "python3"}))["id"]
            for _ in range(8)
        ]
        for kid in kids:
            await call(b.url, ADMIN_TOKEN, "GET", f"/api/kernels/{kid}")  # B serves it too
        codes = await asyncio.gather(
            *(
                status_of(gw.url, ADMIN_TOKEN, "DELETE", f"/api/kernels/{kid}")
                for kid in kids
                for gw in (a, b, a, b)
            )
        )
        # (status_of reports any success as 200: 204 here)
        assert all(code in (200, 404) for code, _ in codes), [
            c for c in codes if c[0] not in (200, 404)
        ]
        for kid in kids:
            assert await record_of(pg_store_url, kid) is None
