"""API clients for the Kubernetes provisioner: one per (URL, kubeconfig, context), and
their calls on the Kubernetes thread pool, never on the event loop."""

from __future__ import annotations

import contextlib
from typing import Any

from kubernetes import client, config

from orchestrator.errors import OrchestratorError
from orchestrator.executors import run_blocking


def api_client(api_url: str, kubeconfig: str, context: str) -> client.ApiClient:
    """An API client: explicit URL, else in-cluster config, else kubeconfig."""
    if api_url:
        configuration = client.Configuration()
        configuration.host = api_url
        return client.ApiClient(configuration)
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        try:
            config.load_kube_config(
                config_file=kubeconfig or None,
                context=context or None,
                client_configuration=configuration,
            )
        except Exception as e:
            raise OrchestratorError(f"no Kubernetes configuration found: {e}") from None
    return client.ApiClient(configuration)


_clients: dict[tuple[str, str, str], client.ApiClient] = {}


# The kubernetes client is synchronous. Its calls get their own pool: on a small
# machine asyncio's default pool has ~6 threads, and 50 concurrent starts would queue
# each kernel's Secret behind other kernels' pods (a pod waits for its Secret volume).
async def call_api(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return await run_blocking("kubernetes", fn, *args, **kwargs)


def shared_client(api_url: str, kubeconfig: str, context: str) -> client.ApiClient:
    key = (api_url, kubeconfig, context)
    if key not in _clients:
        _clients[key] = api_client(api_url, kubeconfig, context)
    return _clients[key]


def forget_clients() -> None:
    """Close and drop every cached client (before the API server they talk to goes)."""
    for api in list(_clients.values()):
        with contextlib.suppress(Exception):
            api.close()
    _clients.clear()
