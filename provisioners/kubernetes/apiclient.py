"""API clients for the Kubernetes provisioner: one per cluster configuration, made and
called on the Kubernetes thread pool, never on the event loop.

Loading a kubeconfig can run an exec credential plugin (cloud CLIs take seconds), so
even making a client happens off the loop (:func:`connect`).
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from typing import Any

from kubernetes import client, config

from orchestrator.errors import OrchestratorError
from orchestrator.executors import run_blocking
from orchestrator.forks import reset_in_child


@dataclass(frozen=True)
class ClusterAccess:
    """How to reach and authenticate to one API server (the kernelspec's settings)."""

    api_url: str = ""
    kubeconfig: str = ""
    context: str = ""
    token_file: str = ""  # with api_url: a bearer token, re-read as it rotates
    ca_file: str = ""  # with api_url: the CA bundle that signs the server's certificate


def _read_token(path: str) -> str:
    try:
        with open(path) as f:
            token = f.read().strip()
    except OSError as e:
        raise OrchestratorError(f"api_token_file {path!r} cannot be read: {e.strerror}") from None
    if not token:
        raise OrchestratorError(f"api_token_file {path!r} is empty")
    return token


def api_client(access: ClusterAccess) -> client.ApiClient:
    """An API client: explicit URL (with token and CA files), else in-cluster config,
    else kubeconfig. Blocking: call it through :func:`connect`."""
    configuration = client.Configuration()
    if access.api_url:
        configuration.host = access.api_url.rstrip("/")
        if access.ca_file:
            if not os.path.isfile(access.ca_file):
                raise OrchestratorError(f"api_ca_file {access.ca_file!r} does not exist")
            configuration.ssl_ca_cert = access.ca_file
        if access.token_file:
            token_file = access.token_file
            configuration.api_key_prefix["authorization"] = "Bearer"
            configuration.api_key["authorization"] = _read_token(token_file)

            # Projected ServiceAccount tokens rotate: read the file again before
            # each request (a file read; the client calls this hook per request).
            def refresh(conf: client.Configuration) -> None:
                conf.api_key["authorization"] = _read_token(token_file)

            configuration.refresh_api_key_hook = refresh
        return client.ApiClient(configuration)
    if access.token_file or access.ca_file:
        raise OrchestratorError("api_token_file and api_ca_file are settings of api_url")
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        try:
            config.load_kube_config(
                config_file=access.kubeconfig or None,
                context=access.context or None,
                client_configuration=configuration,
            )
        except Exception as e:
            raise OrchestratorError(f"no Kubernetes configuration found: {e}") from None
    return client.ApiClient(configuration)


# The kubernetes client is synchronous. Its calls get their own pool: on a small
# machine asyncio's default pool has ~6 threads, and 50 concurrent starts would queue
# each kernel's Secret behind other kernels' pods (a pod waits for its Secret volume).
async def call_api(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await run_blocking("kubernetes", fn, *args, **kwargs)


_clients: dict[ClusterAccess, client.ApiClient] = {}
_clients_lock = threading.Lock()


def _shared(access: ClusterAccess) -> client.ApiClient:
    with _clients_lock:  # concurrent first starts load the configuration once
        if access not in _clients:
            _clients[access] = api_client(access)
        return _clients[access]


async def connect(access: ClusterAccess) -> client.ApiClient:
    """The shared client for ``access``, made once (off the event loop)."""
    if (cached := _clients.get(access)) is not None:
        return cached
    return await run_blocking("kubernetes", _shared, access)


def forget_clients() -> None:
    """Close and drop every cached client (before the API server they talk to goes)."""
    for api in list(_clients.values()):
        with contextlib.suppress(Exception):
            api.close()
    _clients.clear()


@reset_in_child
def _reset_after_fork() -> None:
    """API clients hold connection pools of the parent's: a forked child opens its own."""
    global _clients, _clients_lock
    _clients = {}
    _clients_lock = threading.Lock()
