"""A real JupyterHub for the tests: PyPI's jupyterhub, npm's configurable-http-proxy.

It runs on loopback with the dummy authenticator (one password for every user),
``SimpleLocalProcessSpawner`` and JupyterLab single-user servers, configured for our
gateway only through the shipped ``docs/jupyterhub/jupyterhub_config.py``. The tests
talk to its REST API with a service token of their own that holds the admin role.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from orchestrator import procinfo

from .conftest import REPO
from .test_gateway import free_port, wait_http

SNIPPET = REPO / "docs" / "jupyterhub" / "jupyterhub_config.py"
PASSWORD = "pw-" + uuid.uuid4().hex[:12]
ADMIN_USER = "hubadmin"


class HubError(RuntimeError):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status


class JupyterHub:
    """``python -m jupyterhub`` in its own directory, restartable (servers and proxy
    outlive a restart, as in production)."""

    def __init__(
        self,
        tmp: Path,
        node_modules: Path,
        gateway_url: str,
        service_token: str,
        singleuser_cmd: list[str] | None = None,
    ) -> None:
        """``singleuser_cmd``: what the Hub spawns for a server (JupyterLab by default)."""
        self.dir = tmp / "hub"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port, self.hub_port, self.proxy_api_port = free_port(), free_port(), free_port()
        self.token = "tests-" + uuid.uuid4().hex  # the tests' own admin service
        self.culler_token = "culler-" + uuid.uuid4().hex
        self.log = self.dir / "jupyterhub.log"
        self.env = {
            **os.environ,
            "KERNEL_GATEWAY_URL": gateway_url,
            "KERNEL_GATEWAY_SERVICE_TOKEN": service_token,
            "CONFIGPROXY_AUTH_TOKEN": "proxy-" + uuid.uuid4().hex,
        }
        chp = node_modules / ".bin" / "configurable-http-proxy"
        venv_bin = Path(sys.executable).parent
        cmd = singleuser_cmd or [str(venv_bin / "jupyterhub-singleuser")]
        config = f"""
c = get_config()
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {self.port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {self.hub_port}
c.ConfigurableHTTPProxy.command = [{str(chp)!r}]
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{self.proxy_api_port}"
c.JupyterHub.db_url = "sqlite:///{self.dir}/jupyterhub.sqlite"
c.JupyterHub.cookie_secret_file = "{self.dir}/cookie_secret"
# A restarted Hub finds its servers and its proxy running, as in production.
c.JupyterHub.cleanup_servers = False
c.JupyterHub.cleanup_proxy = False
c.JupyterHub.allow_named_servers = True
c.JupyterHub.authenticate_prometheus = False  # (the benchmark counts API calls there)
c.JupyterHub.authenticator_class = "dummy"
c.DummyAuthenticator.password = {PASSWORD!r}
c.Authenticator.allow_all = True
c.Authenticator.admin_users = {{{ADMIN_USER!r}}}
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = "{self.dir}/home/{{username}}"
c.Spawner.cmd = {cmd!r}
c.Spawner.args = [
    "--allow-root",
    # Nothing beyond loopback: no update check, no news feed.
    "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    "--LabApp.news_url=",
]
c.Spawner.default_url = "/lab"
c.Spawner.start_timeout = 120
c.Spawner.http_timeout = 120
c.JupyterHub.services = [
    {{"name": "tests", "api_token": {self.token!r}}},
    {{"name": "idle-culler", "api_token": {self.culler_token!r}}},
]
c.JupyterHub.load_roles = [
    {{"name": "admin", "services": ["tests"]}},
    {{
        "name": "idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    }},
]
load_subconfig({str(SNIPPET)!r})
"""
        (self.dir / "jupyterhub_config.py").write_text(config)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.hub_port}/hub/api"

    def start(self) -> JupyterHub:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(self.dir / "jupyterhub_config.py")],
            cwd=self.dir,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.log, "ab"),  # noqa: SIM115
        )
        wait_http(f"{self.api_url}/", timeout=120)
        wait_http(f"{self.url}/hub/api/", timeout=60)  # the proxy routes to it
        return self

    def stop(self) -> None:
        """Stop the Hub process only (servers and proxy keep running)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def api(self, method: str, path: str, body: Any = None, token: str = "") -> Any:
        request = urllib.request.Request(
            f"{self.api_url}/{path.lstrip('/')}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"token {token or self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as e:
            raise HubError(e.code, e.read().decode(errors="replace")) from None
        return json.loads(text) if text else None

    def create_user(self, name: str) -> None:
        try:
            self.api("POST", f"users/{name}")
        except HubError as e:
            if e.status != 409:  # already there
                raise

    def server(self, user: str, name: str = "") -> dict[str, Any] | None:
        servers = self.api("GET", f"users/{user}").get("servers") or {}
        return servers.get(name)

    def start_server(self, user: str, name: str = "", timeout: float = 120) -> dict[str, Any]:
        self.create_user(user)
        path = f"users/{user}/servers/{name}" if name else f"users/{user}/server"
        try:
            self.api("POST", path)
        except HubError as e:
            if e.status != 400:  # "already running"
                raise
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.server(user, name)
            if server and server.get("ready"):
                return server
            time.sleep(0.3)
        raise TimeoutError(f"server {user}/{name} did not become ready")

    def stop_server(self, user: str, name: str = "", timeout: float = 60) -> None:
        path = f"users/{user}/servers/{name}" if name else f"users/{user}/server"
        try:
            self.api("DELETE", path)
        except HubError as e:
            if e.status not in (400, 404):
                raise
        deadline = time.monotonic() + timeout
        while self.server(user, name) is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"server {user}/{name} did not stop")
            time.sleep(0.3)

    def server_token(self, user: str, name: str = "") -> str:
        """The token the Hub gave that server (``$JUPYTERHUB_API_TOKEN`` in its process)."""
        server = self.server(user, name)
        assert server is not None, f"{user}/{name} is not running"
        pid = int(server["state"]["pid"])
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        values = dict(e.decode().split("=", 1) for e in environ if b"=" in e)
        return values["JUPYTERHUB_API_TOKEN"]

    def user_token(self, user: str, scopes: list[str] | None = None) -> str:
        """A new token of ``user`` (all their scopes, or ``scopes``)."""
        body: dict[str, Any] = {"note": "tests"}
        if scopes is not None:
            body["scopes"] = scopes
        return str(self.api("POST", f"users/{user}/tokens", body)["token"])

    def shut_down(self) -> None:
        """Stop every server, the Hub and its proxy; nothing of theirs is left running
        (also after a failed start, or a test that failed half-way)."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                for user in self.api("GET", "users"):
                    for name in user.get("servers") or {}:
                        self.stop_server(user["name"], name)
            except Exception:  # (what the Hub could not stop is swept below)
                pass
            finally:
                self.stop()
        left = self.processes()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            left = [pid for pid in left if procinfo.is_running(pid)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def processes(self) -> list[int]:
        """This Hub's processes: the Hub, its proxy and its single-user servers."""
        found = []
        proxy_pid = self.dir / "jupyterhub-proxy.pid"
        with contextlib.suppress(OSError, ValueError):
            found.append(int(proxy_pid.read_text().strip()))
        for pid in procinfo.all_pids():
            if pid == os.getpid():
                continue
            env = procinfo.environ(pid)
            hub = f"http://127.0.0.1:{self.hub_port}/"
            if env.get("JUPYTERHUB_USER") and env.get("JUPYTERHUB_API_URL", "").startswith(hub):
                found.append(pid)  # a single-user server of this Hub (not the gateway)
            else:
                with contextlib.suppress(OSError):
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                    if str(self.dir).encode() in cmdline:
                        found.append(pid)  # the Hub itself
        return [pid for pid in found if procinfo.is_running(pid)]
