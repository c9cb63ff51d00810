"""Reaching kernel pods from outside the cluster: port-forwarding through the API server.

Each kernel channel gets a local loopback listener (port 0: the kernel picks a free
port, no bind-then-close race); every TCP connection a client makes to it opens one
``portforward`` stream (the kubernetes client's websocket support) to the pod's port
and the bytes are pumped both ways. Listeners are kept across reconnects, so clients
keep their connection info.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from kubernetes import client
from kubernetes.stream import portforward

from orchestrator.tunnels.listener import LocalForward, acceptor

log = logging.getLogger("kernel-orchestrator.kubernetes")


class _PodForward(LocalForward):
    """One listener -> one pod port."""

    def __init__(
        self, api: client.ApiClient, namespace: str, pod: str, port: int, local_port: int = 0
    ) -> None:
        self.api, self.namespace, self.pod, self.port = api, namespace, pod, port
        super().__init__(local_port, fall_back=True)

    def open_remote(self) -> tuple[Any, Callable[[], None]] | None:
        # kubernetes.stream swaps the ApiClient's request function while it runs: a
        # client shared with the watch thread would send its requests as websockets.
        core = client.CoreV1Api(client.ApiClient(self.api.configuration))
        try:
            pf = portforward(
                core.connect_get_namespaced_pod_portforward,
                self.pod,
                self.namespace,
                ports=str(self.port),
            )
            remote = pf.socket(self.port)
            remote.setblocking(True)
        except Exception as e:
            log.debug("port-forward to %s/%s:%s failed: %s", self.namespace, self.pod, self.port, e)
            return None

        def done() -> None:
            with contextlib.suppress(Exception):
                pf.close()

        return remote, done


class PodPortForwards:
    """The five channel forwards of one kernel pod."""

    def __init__(self) -> None:
        self.forwards: dict[str, _PodForward] = {}

    def open(
        self,
        api: client.ApiClient,
        namespace: str,
        pod: str,
        ports: dict[str, int],
        local_ports: dict[str, int] | None = None,
    ) -> dict[str, int]:
        self.close()
        for channel, port in ports.items():
            fwd = _PodForward(api, namespace, pod, port, (local_ports or {}).get(channel, 0))
            self.forwards[channel] = fwd
            acceptor().add(fwd)
        return {ch: f.local_port for ch, f in self.forwards.items()}

    def close(self) -> None:
        for fwd in self.forwards.values():
            acceptor().remove(fwd)
            fwd.close()
        self.forwards.clear()
