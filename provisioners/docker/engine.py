"""Talking to a Docker Engine without blocking the event loop.

The ``docker`` SDK is synchronous; every call runs in a dedicated thread pool (sized
for many concurrent kernel starts, so 20 starts do not queue behind the default
executor's handful of threads). One client per engine URL is shared by all kernels.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import docker
import docker.errors
import paramiko
import requests.exceptions

from orchestrator.errors import OrchestratorError

T = TypeVar("T")

_executor = ThreadPoolExecutor(max_workers=32, thread_name_prefix="docker-engine")
_clients: dict[str, docker.DockerClient] = {}
_lock = threading.Lock()


class DockerEngineError(OrchestratorError):
    """The Docker Engine could not be reached or refused a request."""


def engine_url(configured: str) -> str:
    """The engine a kernelspec names, else ``$DOCKER_HOST``, else the local socket."""
    return configured or os.environ.get("DOCKER_HOST", "") or "unix:///var/run/docker.sock"


def _sdk_url(url: str) -> str:
    """The URL to hand the docker SDK.

    For ``ssh://alias`` the SDK would default the port to 22 before reading
    ``~/.ssh/config``, so the alias is resolved here (HostName, User, Port).
    """
    if not url.startswith("ssh://"):
        return url
    from orchestrator.tunnels.ssh import resolve_target

    target = resolve_target(url)
    return f"ssh://{target.user}@{target.host}:{target.port}"


def _connect(url: str) -> docker.DockerClient:
    with _lock:
        client = _clients.get(url)
        if client is None:
            try:
                client = docker.DockerClient(
                    base_url=_sdk_url(url),
                    version="auto",
                    timeout=60,
                    max_pool_size=64,
                    use_ssh_client=False,
                )
            except (docker.errors.DockerException, OSError, paramiko.SSHException) as e:
                raise DockerEngineError(f"Docker engine at {url} is unreachable: {e}") from e
            _clients[url] = client
        return client


async def call(url: str, fn: Callable[[docker.DockerClient], T]) -> T:
    """Run ``fn(client)`` for the engine at ``url`` in the engine thread pool."""

    def run() -> T:
        try:
            return fn(_connect(url))
        except (requests.exceptions.ConnectionError, ConnectionError) as e:
            with _lock:
                _clients.pop(url, None)
            raise DockerEngineError(f"Docker engine at {url} is unreachable: {e}") from e

    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_executor, functools.partial(run))


def forget(url: str) -> None:
    """Drop the cached client (tests that restart an engine use it)."""
    with _lock:
        client = _clients.pop(url, None)
    if client is not None:
        client.close()


def explain(e: Exception) -> str:
    """A one-line description of a Docker API error."""
    if isinstance(e, docker.errors.APIError):
        return str(e.explanation or e)
    return str(e)
