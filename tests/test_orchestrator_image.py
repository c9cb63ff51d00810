"""The orchestrator image run the way the Helm chart runs it.

Read-only root filesystem with a tmpfs /tmp, the kernel store on a volume at /data,
the token from $KERNEL_ORCHESTRATOR_TOKEN, all capabilities dropped: the gateway must
come up, guard its API with the token (but not /healthz and /readyz), run a local
python3 kernel as uid 1000, and after a container restart (its kernels die with it)
find the saved record on the volume, drop it and report no kernels.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from .conftest import REPO

# A fresh machine builds the offline base and the dependency layers first.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

IMAGE = "kernel-orchestrator/orchestrator:latest"
TEST_LABEL = "kernel-orchestrator.test"
TOKEN = "image-" + uuid.uuid4().hex
# Kernel ids in the store on /data, read with the image's own code.
STORE_IDS = (
    "import asyncio, json; from orchestrator.store import open_store; s = open_store();"
    " print(json.dumps(sorted(r.kernel_id for r in asyncio.run(s.list())))); s.close()"
)


@pytest.fixture(scope="module")
def orchestrator_image() -> str:
    """The image, built (or brought up to date from the layer cache) by docker/build.sh."""
    subprocess.run(
        ["bash", str(REPO / "docker" / "build.sh"), "--offline-base", "--only", "orchestrator"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return IMAGE


@pytest.fixture
def dclient() -> Iterator[Any]:
    client = docker.from_env()
    yield client
    client.close()


@pytest.fixture
def labels(dclient: Any) -> Iterator[dict[str, str]]:
    """Labels for this test's containers and volumes; none may be left at the end."""
    run = {TEST_LABEL: uuid.uuid4().hex[:12]}
    yield run
    selector = {"label": f"{TEST_LABEL}={run[TEST_LABEL]}"}
    containers = dclient.containers.list(all=True, filters=selector)
    volumes = dclient.volumes.list(filters=selector)
    for c in containers:
        c.remove(force=True)
    for v in volumes:
        v.remove(force=True)
    assert not containers, f"containers left behind: {[c.name for c in containers]}"
    assert not volumes, f"volumes left behind: {[v.name for v in volumes]}"


def run_gateway(client: Any, labels: dict[str, str], volume: str | None, **kwargs: Any) -> Any:
    """The image as the chart's pod runs it, with port 8888 on a random 127.0.0.1 port.

    /data is the named ``volume``, else a tmpfs (the chart's emptyDir without persistence).
    """
    tmpfs = {"/tmp": ""} if volume else {"/tmp": "", "/data": "uid=1000,gid=1000,mode=0700"}
    return client.containers.run(
        IMAGE,
        detach=True,
        name=f"ko-image-test-{labels[TEST_LABEL]}-{uuid.uuid4().hex[:6]}",
        labels=labels,
        read_only=True,
        tmpfs=tmpfs,
        volumes={volume: {"bind": "/data", "mode": "rw"}} if volume else None,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        ports={"8888/tcp": ("127.0.0.1", None)},
        **kwargs,
    )


async def wait_ready(container: Any, timeout: float = 90) -> str:
    """Base URL of the gateway once /readyz answers 200 (the host port is new after a restart)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        container.reload()
        if container.status in ("exited", "dead"):
            break
        bindings = (container.ports or {}).get("8888/tcp") or []
        if bindings and bindings[0].get("HostPort"):
            base = f"http://127.0.0.1:{bindings[0]['HostPort']}"
            if (await fetch(base, None, "GET", "/readyz"))[0] == 200:
                return base
        await asyncio.sleep(0.3)
    logs = container.logs().decode(errors="replace")
    raise AssertionError(f"gateway not ready ({container.status}):\n{logs[-4000:]}")


async def fetch(
    base: str, token: str | None, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    """(status, JSON body); status 599 when the server does not answer (yet)."""
    request = HTTPRequest(
        f"{base}{path}",
        method=method,
        headers={"Authorization": f"token {token}"} if token else {},
        body=json.dumps(body) if body is not None else (b"" if method == "POST" else None),
        request_timeout=120,
    )
    try:
        response = await AsyncHTTPClient().fetch(request)
    except HTTPClientError as e:
        response = e.response
        if response is None:
            return e.code, None
    except OSError:
        return 599, None
    try:
        return response.code, json.loads(response.body) if response.body else None
    except ValueError:
        return response.code, response.body


class KernelSocket:
    """A kernel's WebSocket channels (JSON messages, as JupyterLab speaks them)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.session = uuid.uuid4().hex

    @classmethod
    async def open(cls, base: str, token: str, kernel_id: str) -> KernelSocket:
        url = base.replace("http", "ws", 1) + f"/api/kernels/{kernel_id}/channels"
        request = HTTPRequest(url, headers={"Authorization": f"token {token}"})
        return cls(await websocket_connect(request))

    async def execute(self, code: str, timeout: float = 60) -> dict[str, Any]:
        msg_id = uuid.uuid4().hex
        header = {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "username": "test",
            "session": self.session,
            "date": "",
            "version": "5.3",
        }
        content = {"code": code, "silent": False, "store_history": False, "allow_stdin": False}
        self.conn.write_message(
            json.dumps(
                {
                    "header": header,
                    "parent_header": {},
                    "metadata": {},
                    "content": content,
                    "channel": "shell",
                    "buffers": [],
                }
            )
        )
        out: list[str] = []
        reply: dict[str, Any] | None = None
        idle = False
        deadline = time.monotonic() + timeout
        while not (reply and idle):
            raw = await asyncio.wait_for(self.conn.read_message(), deadline - time.monotonic())
            if raw is None:
                raise ConnectionError("websocket closed")
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "execute_reply":
                reply = msg["content"]
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        return {**reply, "out": "".join(out)}

    def close(self) -> None:
        self.conn.close()


def exec_out(container: Any, cmd: list[str]) -> str:
    code, out = container.exec_run(cmd)
    assert code == 0, out.decode(errors="replace")
    return str(out.decode()).strip()


def no_errors_logged(container: Any) -> None:
    """No traceback and no error but /readyz's 503 while restoring (jupyter_server logs
    every 5xx as an error, with the request's headers as a second "[E" line)."""
    logs = container.logs().decode(errors="replace")
    assert "Traceback" not in logs, logs[-4000:]
    errors = re.findall(r"^\[E [^\]]*\] (.*)$", logs, re.M)
    unexpected = [e for e in errors if not re.match(r"\{$|503 GET /readyz ", e)]
    assert not unexpected, logs[-4000:]


def test_image_matches_the_chart(orchestrator_image: str, dclient: Any) -> None:
    config = dclient.images.get(orchestrator_image).attrs["Config"]
    assert config["User"] == "1000:1000"
    assert config["Entrypoint"][0] == "tini"
    assert config["Cmd"] == ["kernel-orchestrator", "serve", "--ip", "0.0.0.0", "--port", "8888"]
    assert "8888/tcp" in config["ExposedPorts"]
    env = dict(e.split("=", 1) for e in config["Env"])
    for var in ("JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR", "JUPYTER_CONFIG_DIR", "IPYTHONDIR"):
        assert env[var].startswith("/tmp/"), var
    assert env["KERNEL_ORCHESTRATOR_STORE"] == "sqlite:////data/kernels.db"


async def test_read_only_gateway_runs_kernels_and_survives_a_restart(
    orchestrator_image: str, dclient: Any, labels: dict[str, str]
) -> None:
    volume = dclient.volumes.create(name=f"ko-image-test-{labels[TEST_LABEL]}", labels=labels)
    container = None
    try:
        container = run_gateway(
            dclient, labels, volume.name, environment={"KERNEL_ORCHESTRATOR_TOKEN": TOKEN}
        )
        base = await wait_ready(container)

        # probes without a token, the API only with it
        assert (await fetch(base, None, "GET", "/healthz"))[0] == 200
        assert await fetch(base, None, "GET", "/readyz") == (
            200,
            {"status": "ready"},  # anonymous probes learn nothing more
        )
        assert (await fetch(base, None, "GET", "/api/kernels"))[0] == 403
        assert (await fetch(base, "wrong-" + TOKEN, "GET", "/api/kernels"))[0] == 403
        assert await fetch(base, TOKEN, "GET", "/api/kernels") == (200, [])

        # a local python3 kernel inside the container, used over the WebSocket
        code, kernel = await fetch(base, TOKEN, "POST", "/api/kernels", {"name": "python3"})
        assert code == 201, kernel
        ws = await KernelSocket.open(base, TOKEN, kernel["id"])
        try:
            assert (await ws.execute("print(6*7)"))["out"] == "42\n"
            reply = await ws.execute("import os; print(os.getuid(), os.access('/', os.W_OK))")
            assert reply["out"] == "1000 False\n"
        finally:
            ws.close()

        # every process of the container runs as uid 1000, the kernel among them
        assert exec_out(container, ["id", "-u"]) == "1000"
        top = container.top(ps_args="-o pid,uid,args")
        uid, args = top["Titles"].index("UID"), top["Titles"].index("COMMAND")
        assert {p[uid] for p in top["Processes"]} == {"1000"}, top
        assert any("ipykernel" in p[args] for p in top["Processes"]), top
        assert json.loads(exec_out(container, ["python", "-c", STORE_IDS])) == [kernel["id"]]

        # `docker restart`, in two steps to look at the volume in between: the record
        # is on /data, the kernel died with the container
        container.stop(timeout=30)
        saved = dclient.containers.run(
            orchestrator_image,
            ["python", "-c", STORE_IDS],
            remove=True,
            labels=labels,
            read_only=True,
            tmpfs={"/tmp": ""},
            volumes={volume.name: {"bind": "/data", "mode": "rw"}},
            network_mode="none",
        )
        assert json.loads(saved) == [kernel["id"]]
        container.start()
        base = await wait_ready(container)

        # the gateway found the stale record, removed it and reports no kernels
        assert await fetch(base, TOKEN, "GET", "/api/kernels") == (200, [])
        assert (await fetch(base, TOKEN, "GET", f"/api/kernels/{kernel['id']}"))[0] == 404
        assert await fetch(base, None, "GET", "/readyz") == (
            200,
            {"status": "ready"},  # anonymous probes learn nothing more
        )
        assert json.loads(exec_out(container, ["python", "-c", STORE_IDS])) == []
        assert kernel["id"] in container.logs().decode(errors="replace")
        no_errors_logged(container)
    finally:
        if container is not None:
            container.remove(force=True)
        volume.remove(force=True)


async def test_without_a_token_one_is_generated_and_printed(
    orchestrator_image: str, dclient: Any, labels: dict[str, str]
) -> None:
    container = run_gateway(dclient, labels, None)
    try:
        base = await wait_ready(container)
        printed = re.findall(
            r"^kernel-orchestrator gateway token: (\S+)$",
            container.logs(stdout=False, stderr=True).decode(errors="replace"),
            re.M,
        )
        assert len(printed) == 1
        assert (await fetch(base, None, "GET", "/api/kernels"))[0] == 403
        assert await fetch(base, printed[0], "GET", "/api/kernels") == (200, [])
        no_errors_logged(container)
    finally:
        container.remove(force=True)
