"""Talking to a Docker Engine without blocking the event loop.

The ``docker`` SDK is synchronous; every call runs on a thread pool of its engine's
own (``docker:<url>``), so 20 concurrent starts do not queue behind the default
executor's handful of threads, and an unreachable engine ties up only its own
threads: kernels on other engines, the store and the other back-ends go on. One
client per engine URL is shared by all kernels; connecting it (which asks the engine
for its API version) holds only that engine's lock.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TypeVar

import docker
import docker.errors
import paramiko
import requests.exceptions

from orchestrator.errors import OrchestratorError
from orchestrator.executors import run_blocking
from orchestrator.forks import reset_in_child

T = TypeVar("T")

_clients: dict[str, docker.DockerClient] = {}
_locks: dict[str, threading.Lock] = {}
_locks_lock = threading.Lock()


def _engine_lock(url: str) -> threading.Lock:
    with _locks_lock:
        return _locks.setdefault(url, threading.Lock())


class DockerEngineError(OrchestratorError):
    """The Docker Engine could not be reached or refused a request."""


def engine_url(configured: str) -> str:
    """The engine a kernelspec names, else ``$DOCKER_HOST``, else the local socket."""
    return configured or os.environ.get("DOCKER_HOST", "") or "unix:///var/run/docker.sock"


def sdk_url(url: str) -> str:
    """The URL to hand the docker SDK.

    For ``ssh://alias`` the SDK would default the port to 22 before reading
    ``~/.ssh/config``, so the alias is resolved here (HostName, User, Port).
    """
    if not url.startswith("ssh://"):
        return url
    from orchestrator.tunnels.ssh import resolve_target

    target = resolve_target(url)
    return f"ssh://{target.user}@{target.host}:{target.port}"


def new_client(url: str, resolved: str = "") -> docker.DockerClient:
    """A client of its own for engine ``url`` (``resolved``: its :func:`sdk_url`, found
    earlier). Blocks: call it off the event loop."""
    try:
        return docker.DockerClient(
            base_url=resolved or sdk_url(url),
            version="auto",
            timeout=60,
            max_pool_size=64,
            use_ssh_client=False,
        )
    except (docker.errors.DockerException, OSError, paramiko.SSHException) as e:
        raise DockerEngineError(f"Docker engine at {url} is unreachable: {e}") from e


def _connect(url: str) -> docker.DockerClient:
    """The shared client of engine ``url`` (made on first use; blocks: call it off the
    event loop)."""
    with _engine_lock(url):
        client = _clients.get(url)
        if client is None:
            client = _clients[url] = new_client(url)
        return client


async def call(url: str, fn: Callable[[docker.DockerClient], T]) -> T:
    """Run ``fn(client)`` for the engine at ``url`` on that engine's thread pool."""

    def run() -> T:
        try:
            return fn(_connect(url))
        except (requests.exceptions.ConnectionError, ConnectionError) as e:
            with _engine_lock(url):
                _clients.pop(url, None)
            raise DockerEngineError(f"Docker engine at {url} is unreachable: {e}") from e

    return await run_blocking(f"docker:{url}", run)


def explain(e: Exception) -> str:
    """A one-line description of a Docker API error."""
    if isinstance(e, docker.errors.APIError):
        return str(e.explanation or e)
    return str(e)


#: The bridge network kernels join when a kernelspec names none.
KERNEL_NETWORK = "kernel-orchestrator-kernels"
#: Its bridge interface on the engine host (named, so firewall rules can name it).
KERNEL_BRIDGE = "ko-kernels0"
_ISOLATION_OPTIONS = {
    "com.docker.network.bridge.enable_icc": "false",
    "com.docker.network.bridge.name": KERNEL_BRIDGE,
}
#: (engine URL, network) -> its bridge interface, for networks checked already
_networks_ready: dict[tuple[str, str], str] = {}


def ensure_isolated_network(client: docker.DockerClient, url: str, name: str) -> str:
    """Create (once per engine) the bridge network whose containers cannot reach each
    other: inter-container traffic is off, so a kernel reaches no other kernel's ports,
    while the engine host (and the ports it publishes) still reaches every kernel.

    Idempotent across processes and replicas: a network of that name made by someone
    else is checked to be isolated too, and refused if it is not. Returns the name of
    its bridge interface on the engine host.
    """
    if (url, name) in _networks_ready:
        return _networks_ready[(url, name)]
    try:
        network = client.api.inspect_network(name)
    except docker.errors.NotFound:
        try:
            client.api.create_network(
                name,
                driver="bridge",
                options=_ISOLATION_OPTIONS,
                labels={"kernel-orchestrator.network": "kernels"},
                check_duplicate=True,
            )
        except docker.errors.APIError as e:
            if e.status_code != 409 and "already exists" not in str(e):
                raise
        network = client.api.inspect_network(name)
    options = network.get("Options") or {}
    if options.get("com.docker.network.bridge.enable_icc") != "false":
        raise DockerEngineError(
            f"Docker network {name!r} on {url} lets containers reach each other"
            " (com.docker.network.bridge.enable_icc is not false): refusing to put"
            " kernels of different users on it"
        )
    bridge = options.get("com.docker.network.bridge.name") or f"br-{network['Id'][:12]}"
    _networks_ready[(url, name)] = bridge
    return bridge


def forget_network(url: str, name: str) -> None:
    """Check ``name`` again next time (it was found missing)."""
    _networks_ready.pop((url, name), None)


@reset_in_child
def _reset_after_fork() -> None:
    """Engine clients and their locks are the parent's: a forked child opens its own."""
    global _clients, _locks, _locks_lock, _networks_ready
    _clients = {}
    _locks = {}
    _locks_lock = threading.Lock()
    _networks_ready = {}
